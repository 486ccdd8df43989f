/*
 * UTF-8 as Unicode defines it (Unicode 15, table 3-7: well-formed byte
 * sequences): no overlongs, no surrogates, nothing above U+10FFFF.  The
 * one decoder the tokenizer, the OpenAI layer and the commands share.
 */
#ifndef MOED_COMMON_UTF8_H
#define MOED_COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Length of the character at s[0, n) (n >= 1): > 0 for a valid one; 0 when
 * s is a valid but incomplete start (n too short); -k when invalid, k >= 1
 * being the maximal invalid subpart to replace by one U+FFFD. */
int utf8_next(const unsigned char *s, size_t n);

/* Is s[0, n) valid UTF-8?  If not and bad_at is non-NULL, the offset of the
 * first bad byte. */
bool utf8_valid(const char *s, size_t n, size_t *bad_at);

#endif
