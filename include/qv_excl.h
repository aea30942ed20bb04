/* qv_excl.h - exclude= taken out of an -o option group before libfuse's parser sees it: its
 * value is a regex whose backslashes must reach plan's translation as written, where libfuse
 * would drop them (`\d` would arrive as `d`). Only the option syntax lives here (where the
 * value ends, its one escape `\,`, the mistakes that escape invites); plan.c translates the
 * regex itself. FUSE-free. */
#ifndef QV_EXCL_H
#define QV_EXCL_H

/* Split option group g (the text of one -o argument) into its exclude= value and the rest.
 * An option runs to the next comma not preceded by a backslash; in the value of exclude= the
 * pair "\," stands for a comma and every other backslash stays with the character after it.
 * 0 with *rest (malloc'd: the other options in their order, maybe "") and *pattern (malloc'd:
 * the last exclude='s value, NULL when g has none); -EINVAL for a pattern cut at a comma with
 * a bracket, group or brace still open, or holding a doubled backslash, logged with the way
 * to write it; -ENOMEM, logged. */
int qv_excl_take(const char *g, char **rest, char **pattern);

#endif
