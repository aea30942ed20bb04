/* qv_rx.h - Python regular expressions (re.match: anchored at the start) as POSIX EREs
 * (glibc, bytes): the translation keeps re.match's decision for every ASCII name, or refuses
 * the pattern naming the construct, never taking one literally. FUSE-free. */
#ifndef QV_RX_H
#define QV_RX_H

#include <stddef.h>

#include "qv_util.h"

/* pat as an ERE into *ere (the caller frees it); 0, -ENOMEM, or -EINVAL with one line in err
 * naming pat and what cannot be translated. */
int qv_rx_ere(const char *pat, struct qv_buf *ere, char *err, size_t errlen);

#endif
