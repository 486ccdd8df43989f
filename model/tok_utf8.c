/*
 * UTF-8 decoding that never fails (an invalid byte is a character of its
 * own), and GPT-2's byte <-> character mapping.
 *
 * GPT-2 (and every byte-level BPE since) gives each of the 256 byte values a
 * printable Unicode character so that vocabulary entries are readable text:
 * the 188 bytes that are printable Latin-1 (0x21-0x7E, 0xA1-0xAC,
 * 0xAE-0xFF) stand for themselves, the other 68 (controls, space, 0x7F-0xA0,
 * soft hyphen) become U+0100, U+0101, ... in byte order.  So ' ' is 'Ġ'
 * (U+0120) and '\n' is 'Ċ' (U+010A).
 */
#include <stdint.h>

#include "common/utf8.h"
#include "model/tok_impl.h"

size_t tok_utf8_next(const uint8_t *s, size_t n, int32_t *cp)
{
    int len = utf8_next(s, n);
    if (len <= 0) { /* invalid or cut short: the byte is a character of its own */
        *cp = -1;
        return 1;
    }
    /* the lead byte's payload: 7, 5, 4 or 3 bits */
    uint32_t c = s[0] & (len == 1 ? 0x7F : len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (int i = 1; i < len; i++)
        c = c << 6 | (s[i] & 0x3F);
    *cp = (int32_t)c;
    return (size_t)len;
}

size_t tok_utf8_put(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

static bool gpt2_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t tok_gpt2_char(uint8_t b)
{
    if (gpt2_printable(b))
        return b;
    /* the k-th non-printable byte (in byte order) maps to 256 + k */
    uint32_t k;
    if (b <= 0x20)
        k = b; /* 0x00..0x20: 33 bytes */
    else if (b <= 0xA0)
        k = 33 + (b - 0x7F); /* 0x7F..0xA0: 34 bytes */
    else
        k = 67; /* 0xAD */
    return 256 + k;
}

int tok_gpt2_byte(uint32_t cp)
{
    if (cp < 256)
        return gpt2_printable(cp) ? (int)cp : -1;
    if (cp > 256 + 67)
        return -1;
    uint32_t k = cp - 256;
    if (k <= 32)
        return (int)k;
    if (k <= 66)
        return (int)(0x7F + (k - 33));
    return 0xAD;
}

size_t tok_gpt2_utf8(uint8_t b, uint8_t out[2])
{
    return tok_utf8_put(tok_gpt2_char(b), out);
}
