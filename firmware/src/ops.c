/* SPDX-License-Identifier: Apache-2.0 */
/* The registered op list of ops.h as strings, reported as a capability by either runner. */
#include "tml/ops.h"
#include "tml/runner.h"

#define TML_OP_NAME(name, method) #name,
const char *const tml_registered_ops[] = {TML_OPS(TML_OP_NAME)};
#undef TML_OP_NAME
const size_t tml_registered_op_count = sizeof(tml_registered_ops) / sizeof(tml_registered_ops[0]);
