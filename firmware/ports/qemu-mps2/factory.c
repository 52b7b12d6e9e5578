/* SPDX-License-Identifier: Apache-2.0 */
/*
 * First boot with a factory model: the image carries a model at slot 0 (factory_model.S) but
 * the metadata has no model yet. Record it as the active model before the device loop starts:
 * package TML_FACTORY_PACKAGE (make FACTORY_PACKAGE=..., the id of the server's package for that
 * model, so events and status name it; default 0, none) with that id as its sequence, so any
 * later signed package supersedes it. Later boots find the
 * record, or an update that replaced it, and change nothing.
 */
#include "mps2.h"
#include "tml/sha.h"
#include "tml/slots.h"

#ifndef TML_FACTORY_PACKAGE
#define TML_FACTORY_PACKAGE 0
#endif

extern const uint8_t tml_factory_model[], tml_factory_model_end[];

void tml_mps2_factory_adopt(void)
{
    tml_slots_t s;
    uint32_t size = (uint32_t)(tml_factory_model_end - tml_factory_model);
    if (size == 0 || tml_slots_load(&s) != TML_OK || s.meta.active != TML_SLOT_NONE ||
        s.meta.trial != TML_SLOT_NONE || s.meta.slot[0].valid) {
        return;
    }
    s.meta.slot[0].sequence = TML_FACTORY_PACKAGE;
    s.meta.slot[0].size = size;
    s.meta.slot[0].package_id = TML_FACTORY_PACKAGE;
    tml_sha256(tml_factory_model, size, s.meta.slot[0].sha256);
    s.meta.slot[0].valid = 1;
    s.meta.active = 0;
    (void)tml_slots_save(&s);
}
