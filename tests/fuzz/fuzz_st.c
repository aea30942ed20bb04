/* libFuzzer target: the safetensors header parser. Input = header bytes; the file is taken to
 * hold exactly as many data bytes as the last 4 input bytes say, so valid seeds parse. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qv_st.h"
#include "qv_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qv_st st;
	char err[QV_ERRLEN];
	uint32_t dsize = 0;
	char *hdr;

	if (size < 4)
		return 0;
	memcpy(&dsize, data + size - 4, 4);
	size -= 4;
	hdr = malloc(size ? size : 1); /* exact size, no NUL: over-reads trip ASan */
	memcpy(hdr, data, size);
	if (qv_st_parse(hdr, size, 8 + (uint64_t)size + dsize, &st, err, sizeof(err)) == 0) {
		uint64_t pos = 0;

		/* a parse that succeeds must describe a file exactly */
		for (size_t i = 0; i < st.nt; i++) {
			if (st.t[i].begin != pos)
				abort();
			pos = st.t[i].end;
		}
		if (pos != dsize)
			abort();
		qv_st_free(&st);
	} else if (!err[0]) {
		abort(); /* every rejection names its reason */
	}
	free(hdr);
	return 0;
}
