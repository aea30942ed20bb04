/* qv_view.h - building a view: the virtual files of one naming/slicing plan over the scanned
 * source. FUSE-free. */
#ifndef QV_VIEW_H
#define QV_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include "qv_mount.h"
#include "qv_plan.h"

/* Build the view of scan folder sdir under folder node dn with plan p (recursively); 0 or
 * -errno with one line in err naming the file or tensor and the reason. */
int qv_view_build(struct qv_mount *m, const struct qv_plan *p, uint32_t sdir, struct qv_node *dn,
		  char *err, size_t errlen);

/* Check that plan p can cut every expert tensor of the source, without building anything. */
int qv_view_validate(struct qv_mount *m, const struct qv_plan *p, char *err, size_t errlen);

#endif
