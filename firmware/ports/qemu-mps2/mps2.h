/* SPDX-License-Identifier: Apache-2.0 */
/** @file mps2.h @brief mps2-an385 / mps2-an386 port extras. */
#ifndef TML_MPS2_H
#define TML_MPS2_H

#include <stdint.h>

/** @brief Set up UART0 (RX interrupt) and SysTick (1 kHz). */
void tml_mps2_init(void);

/** @brief End QEMU through semihosting with an exit code. @param code exit status */
void tml_mps2_exit(int code);

/** @brief Return the deepest the stack has been, in bytes (stack painting). @return bytes */
uint32_t tml_mps2_stack_peak(void);

/** @brief At first boot, record the factory model at slot 0 as the active one (factory.c). */
void tml_mps2_factory_adopt(void);

#endif /* TML_MPS2_H */
