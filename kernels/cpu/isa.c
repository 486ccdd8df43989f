/* CPU feature detection and the active ISA level (see isa.h).
 * AVX and AVX-512 need OS support as well as CPUID bits: XCR0 must enable
 * the YMM (bits 1-2) and ZMM/opmask (bits 5-7) state. */
#include "kernels/cpu/isa.h"

#include <cpuid.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static struct kern_cpu_features feat;
static enum kern_isa best, active;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static void detect(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        bool osxsave = c & (1u << 27);
        uint64_t xcr0 = osxsave ? xgetbv0() : 0;
        bool ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xe6) == 0xe6;
        bool amx = (xcr0 & (3u << 17)) == (3u << 17);
        feat.fma = ymm && (c & (1u << 12));
        feat.f16c = ymm && (c & (1u << 29));
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
            feat.avx2 = ymm && (b & (1u << 5));
            feat.avx512f = zmm && (b & (1u << 16));
            feat.avx512dq = zmm && (b & (1u << 17));
            feat.avx512bw = zmm && (b & (1u << 30));
            feat.avx512vl = zmm && (b & (1u << 31));
            feat.avx512vnni = zmm && (c & (1u << 11));
            feat.amx_bf16 = amx && (d & (1u << 22));
            feat.amx_tile = amx && (d & (1u << 24));
            feat.amx_int8 = amx && (d & (1u << 25));
            if (__get_cpuid_count(7, 1, &a, &b, &c, &d))
                feat.avx512bf16 = zmm && (a & (1u << 5));
        }
    }
    best = KERN_ISA_SCALAR;
    if (feat.avx2 && feat.fma && feat.f16c)
        best = KERN_ISA_AVX2;
    if (best == KERN_ISA_AVX2 && feat.avx512f && feat.avx512bw && feat.avx512vl && feat.avx512dq)
        best = KERN_ISA_AVX512;
    active = best;
    const char *env = getenv("MOED_ISA");
    if (env && *env) {
        for (int i = KERN_ISA_SCALAR; i <= (int)best; i++)
            if (strcmp(env, kern_isa_name((enum kern_isa)i)) == 0)
                active = (enum kern_isa)i;
    }
}

const struct kern_cpu_features *kern_cpu_features(void)
{
    pthread_once(&once, detect);
    return &feat;
}

enum kern_isa kern_isa_best(void)
{
    pthread_once(&once, detect);
    return best;
}

enum kern_isa kern_isa_active(void)
{
    pthread_once(&once, detect);
    return active;
}

int kern_isa_set(enum kern_isa isa)
{
    pthread_once(&once, detect);
    if (isa > best)
        return MOED_EUNSUPPORTED;
    active = isa;
    return 0;
}

const char *kern_isa_name(enum kern_isa isa)
{
    switch (isa) {
    case KERN_ISA_SCALAR: return "scalar";
    case KERN_ISA_AVX2: return "avx2";
    case KERN_ISA_AVX512: return "avx512";
    }
    return "?";
}

const char *kern_isa_describe(void)
{
    static char buf[96];
    const struct kern_cpu_features *f = kern_cpu_features();
    snprintf(buf, sizeof buf, "%s%s%s%s", kern_isa_name(kern_isa_active()),
             f->avx512vnni && active == KERN_ISA_AVX512 ? " +vnni" : "",
             f->avx512bf16 && active == KERN_ISA_AVX512 ? " +bf16" : "",
             f->amx_tile ? " (amx present)" : "");
    return buf;
}
