/* libFuzzer target: index parsing and regeneration (qv_hdr_index_files, qv_hdr_index). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "qv_hdr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *json = malloc(size ? size : 1), **files = NULL, err[QV_ERRLEN];
	struct qv_buf out = { 0 };
	struct qv_wentry *w;
	size_t nfiles = 0;

	memcpy(json, data, size);
	if (qv_hdr_index_files(json, size, &files, &nfiles, err, sizeof(err)) == 0) {
		/* regenerate with one entry per named file; the output must be valid JSON */
		w = calloc(nfiles ? nfiles : 1, sizeof(*w));
		for (size_t i = 0; i < nfiles; i++)
			w[i] = (struct qv_wentry){ files[i], files[i] };
		if (qv_hdr_index(json, size, w, nfiles, 12345, &out, err, sizeof(err)) == 0) {
			cJSON *j = cJSON_ParseWithLength(out.p, out.len);

			if (!j)
				abort();
			cJSON_Delete(j);
		}
		for (size_t i = 0; i < nfiles; i++)
			free(files[i]);
		free(files);
		free(w);
		qv_buf_free(&out);
	}
	free(json);
	return 0;
}
