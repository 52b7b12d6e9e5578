/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The factory model, placed by the linker script at slot 0 (as a factory programmer would write
 * it): the file named by TML_FACTORY_MODEL_FILE (the Makefile's FACTORY_MODEL), never copied.
 */
    .section .factory_model, "a"
    .balign 16
    .global tml_factory_model
tml_factory_model:
    .incbin TML_FACTORY_MODEL_FILE
    .global tml_factory_model_end
tml_factory_model_end:
