/* Block geometry of every GGUF tensor type (see types.h). */
#include "kernels/cpu/types.h"

#include <strings.h>

/* Sizes follow the block layouts in GGUF's definition: e.g. Q4_K is
 * d,dmin (2 x f16) + 12 bytes of 6-bit scales + 128 bytes of nibbles. */
static const struct kern_type_traits traits[KT_COUNT] = {
    [KT_F32] = {"F32", 1, 4, false},
    [KT_F16] = {"F16", 1, 2, false},
    [KT_Q4_0] = {"Q4_0", 32, 2 + 16, true},
    [KT_Q4_1] = {"Q4_1", 32, 2 + 2 + 16, true},
    [KT_Q5_0] = {"Q5_0", 32, 2 + 4 + 16, true},
    [KT_Q5_1] = {"Q5_1", 32, 2 + 2 + 4 + 16, true},
    [KT_Q8_0] = {"Q8_0", 32, 2 + 32, true},
    [KT_Q8_1] = {"Q8_1", 32, 2 + 2 + 32, true},
    [KT_Q2_K] = {"Q2_K", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2, true},
    [KT_Q3_K] = {"Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2, true},
    [KT_Q4_K] = {"Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2, true},
    [KT_Q5_K] = {"Q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2, true},
    [KT_Q6_K] = {"Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, true},
    [KT_Q8_K] = {"Q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2, true},
    [KT_IQ2_XXS] = {"IQ2_XXS", QK_K, 2 + QK_K / 8 * 2, true},
    [KT_IQ2_XS] = {"IQ2_XS", QK_K, 2 + QK_K / 8 * 2 + QK_K / 32, true},
    [KT_IQ3_XXS] = {"IQ3_XXS", QK_K, 2 + 3 * QK_K / 8, true},
    [KT_IQ1_S] = {"IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16, true},
    [KT_IQ4_NL] = {"IQ4_NL", 32, 2 + 16, true},
    [KT_IQ3_S] = {"IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64, true},
    [KT_IQ2_S] = {"IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 32 + QK_K / 32, true},
    [KT_IQ4_XS] = {"IQ4_XS", QK_K, 2 + 2 + QK_K / 64 + QK_K / 2, true},
    [KT_I8] = {"I8", 1, 1, false},
    [KT_I16] = {"I16", 1, 2, false},
    [KT_I32] = {"I32", 1, 4, false},
    [KT_I64] = {"I64", 1, 8, false},
    [KT_F64] = {"F64", 1, 8, false},
    [KT_IQ1_M] = {"IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32, true},
    [KT_BF16] = {"BF16", 1, 2, false},
    [KT_TQ1_0] = {"TQ1_0", QK_K, (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2, true},
    [KT_TQ2_0] = {"TQ2_0", QK_K, QK_K / 4 + 2, true},
    [KT_MXFP4] = {"MXFP4", 32, 1 + 16, true},
};

const struct kern_type_traits *kern_type_traits(uint32_t t)
{
    if (t >= KT_COUNT || traits[t].name == NULL)
        return NULL;
    return &traits[t];
}

const char *kern_type_name(uint32_t t)
{
    const struct kern_type_traits *tt = kern_type_traits(t);
    return tt ? tt->name : "?";
}

int kern_type_from_name(const char *name)
{
    for (int t = 0; t < KT_COUNT; t++)
        if (traits[t].name && strcasecmp(traits[t].name, name) == 0)
            return t;
    return -1;
}

size_t kern_row_size(uint32_t t, int64_t n)
{
    const struct kern_type_traits *tt = kern_type_traits(t);
    if (!tt || n < 0 || n % tt->blck != 0)
        return 0;
    return (size_t)(n / tt->blck) * tt->size;
}
