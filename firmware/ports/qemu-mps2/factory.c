/* SPDX-License-Identifier: Apache-2.0 */
/*
 * First boot with a factory model: the image carries a model at slot 0 (factory_model.S) but
 * the metadata has no model yet. Record it as the active model (package 0, manifest sequence 0,
 * so any signed update supersedes it) before the device loop starts. Later boots find the
 * record, or an update that replaced it, and change nothing.
 */
#include "mps2.h"
#include "tml/sha.h"
#include "tml/slots.h"

extern const uint8_t tml_factory_model[], tml_factory_model_end[];

void tml_mps2_factory_adopt(void)
{
    tml_slots_t s;
    uint32_t size = (uint32_t)(tml_factory_model_end - tml_factory_model);
    if (size == 0 || tml_slots_load(&s) != TML_OK || s.meta.active != TML_SLOT_NONE ||
        s.meta.trial != TML_SLOT_NONE || s.meta.slot[0].valid) {
        return;
    }
    s.meta.slot[0].sequence = 0;
    s.meta.slot[0].size = size;
    s.meta.slot[0].package_id = 0;
    tml_sha256(tml_factory_model, size, s.meta.slot[0].sha256);
    s.meta.slot[0].valid = 1;
    s.meta.active = 0;
    (void)tml_slots_save(&s);
}
