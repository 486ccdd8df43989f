/*
 * Routing traces: an expert executor (moe.h) that writes down the routing
 * of every MoE layer it is handed and then passes the work, untouched, to
 * the executor that computes it.  The forward pass cannot tell it is there
 * (the logits are bit-identical); tools/trace_summary.py reads the file.
 *
 * The recorder knows each token's place in the step's batch; the caller
 * tells it the rest (sequence, position, token id) with trace_step() before
 * each fwd_step.  Without that call the recorder still works: a new step
 * begins whenever a layer index does not increase, and sequence, position
 * and token are written as -1.
 *
 * File format (version 1), all integers and floats little-endian:
 *
 *   header, header_size bytes:
 *     0  char[8]  magic "MOEDTRC1"
 *     8  u32      version (1)
 *    12  u32      header_size: bytes before the first record (a multiple of 8)
 *    16  i32      n_layer
 *    20  i32      n_expert      experts per layer
 *    24  i32      n_used        experts per token (top-k)
 *    28  u32      record_size = 24 + 8 * n_used
 *    32  u32      meta_len: bytes of the metadata text at offset 40
 *    36  u32      0 (reserved)
 *    40  meta_len bytes of UTF-8 JSON, an object: "format" ("moed routing
 *        trace"), "version", and what the writer knew of "model" (path),
 *        "arch", "argv" (the command line, an array of strings); then zero
 *        bytes up to header_size
 *   then records of record_size bytes, one per (step, layer, token), in the
 *   order the executor saw them: step by step, within a step layer by layer,
 *   within a layer in batch order:
 *     0  i32      step          increasing from 0 (not necessarily by 1: a
 *                               step that failed before its MoE layers
 *                               leaves a gap)
 *     4  i32      index         the token's index in the step's batch
 *     8  i32      seq           its sequence, -1 unknown: the id the caller
 *                               gave trace_step (moed run: fwd_batch.seq; a
 *                               server should give a stable request id)
 *    12  i32      pos           its position in the sequence, -1 unknown
 *    16  i32      token         its token id (the input of this step), -1 unknown
 *    20  i32      layer
 *    24  i32[n_used]  experts, in the router's order (descending weight)
 *    24 + 4 n_used  f32[n_used]  their routing weights as the experts got them
 *                               (after renormalisation where the model does it)
 *
 * A file cut short (a killed process) ends with a partial record, which
 * readers drop.  Records are written through the FILE's buffer as they
 * come (about 24 + 8k bytes per token and layer: 56 bytes for top-4).
 *
 * One thread at a time: the one calling fwd_step (the forward pass calls
 * its executor from that thread).
 */
#ifndef MOED_MODEL_TRACE_H
#define MOED_MODEL_TRACE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"
#include "model/moe.h"

#define TRACE_MAGIC "MOEDTRC1"
#define TRACE_VERSION 1u
#define TRACE_FIXED_HEADER 40u
#define TRACE_RECORD_FIXED 24u

struct trace_opts {
    FILE *f;                /* written from its current position; never closed here */
    struct moe_exec *inner; /* the executor that computes the experts */
    bool own_inner;         /* trace_close frees inner as well */
    int32_t n_layer, n_expert, n_used;
    const char *model;   /* optional: the model's path, into the metadata */
    const char *arch;    /* optional: its architecture name */
    int argc;            /* optional: the command line that made the trace, */
    char *const *argv;   /* written as the metadata's "argv" array */
};

struct trace;

/* Write the header; MOED_EINVAL for bad sizes, MOED_EIO if the write fails,
 * MOED_ENOMEM. */
int trace_open(struct trace **out, const struct trace_opts *o, struct moed_err *e);

/* The executor to give the forward pass (fwd_opts.exec).  Its free() is
 * trace_close with the error dropped. */
struct moe_exec *trace_exec(struct trace *t);

/* The batch of the next fwd_step: n tokens, their ids, sequence ids and
 * positions (any may be NULL: written as -1).  seq may be fwd_batch.seq or
 * any other per-sequence id (a request id: fwd_batch.seq indexes the step's
 * seqs array, which a server may reorder between steps).  The arrays are
 * read while that step runs and must stay valid until it returns.  Begins
 * a new step. */
void trace_step(struct trace *t, int32_t n, const int32_t *token, const int32_t *seq,
                const int32_t *pos);

/* Records written so far (one per token and layer). */
int64_t trace_records(const struct trace *t);

/* Flush, free (the inner executor too when owned; the FILE is left open).
 * Returns 0, or MOED_EIO when a write failed at any point (recording stops
 * at the first failure; the forward pass itself is never failed by it).
 * NULL is a no-op. */
int trace_close(struct trace *t, struct moed_err *e);

#endif
