/* SPDX-License-Identifier: Apache-2.0 */
/* The transfer, the model it must become and the delta base, linked into flash. */
    .section .rodata.blobs, "a"
    .balign 4
    .global transfer_start, transfer_end, model_start, model_end, base_start, base_end
transfer_start:
    .incbin TRANSFER_FILE
transfer_end:
    .balign 4
model_start:
    .incbin MODEL_FILE
model_end:
    .balign 4
base_start:
    .incbin BASE_FILE
base_end:
