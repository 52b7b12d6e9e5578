/* SPDX-License-Identifier: Apache-2.0 */
/* The runner interface on the test-source fake: input_bytes() and invoke_raw() contracts. */
#include <string.h>

#include "tml/runner.h"
#include "tml_test.h"

void suite_runner(void)
{
    tml_model_runner_t *r = tml_runner_test_source();
    uint8_t model[16] = {0x18, 0, 0, 0, 'T', 'F', 'L', '3', 1, 2, 3, 4, 5, 6, 7, 8};
    uint8_t in[96], out[16], again[16];
    size_t len = 0;
    memset(in, 0x5A, sizeof(in));

    tml_case("runner", "nothing_loaded_has_no_input_and_refuses_invoke_raw");
    r->unload(r);
    CHECK_EQ(r->input_bytes(r), 0);
    CHECK_EQ(r->invoke_raw(r, in, 24, out, sizeof(out), &len), TML_ERR_STATE);

    tml_case("runner", "invoke_raw_is_deterministic_per_model_and_input");
    CHECK_EQ(r->load(r, model, sizeof(model)), TML_OK);
    size_t n = r->input_bytes(r); /* 24..95 by the fake's rule (runner_test_source.c) */
    CHECK(n >= 24 && n < 96);
    CHECK_EQ(r->invoke_raw(r, in, n, out, sizeof(out), &len), TML_OK);
    CHECK(len >= 4 && len <= 10); /* one byte per label */
    tml_inference_t inf;
    CHECK_EQ(r->infer(r, &inf), TML_OK); /* inferences in between change nothing */
    size_t len2 = 0;
    CHECK_EQ(r->invoke_raw(r, in, n, again, sizeof(again), &len2), TML_OK);
    CHECK(len2 == len && memcmp(out, again, len) == 0);
    in[3] ^= 1;
    CHECK_EQ(r->invoke_raw(r, in, n, again, sizeof(again), &len2), TML_OK);
    CHECK(memcmp(out, again, len) != 0);

    tml_case("runner", "invoke_raw_refuses_size_mismatches");
    CHECK_EQ(r->invoke_raw(r, in, n - 1, out, sizeof(out), &len), TML_ERR_MALFORMED);
    CHECK_EQ(r->invoke_raw(r, in, n, out, len - 1, &len2), TML_ERR_MALFORMED);
    r->unload(r);
    CHECK_EQ(r->input_bytes(r), 0);
}
