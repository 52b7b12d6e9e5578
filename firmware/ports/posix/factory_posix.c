/* SPDX-License-Identifier: Apache-2.0 */
/*
 * First boot with a factory model (tml-device --factory PATH): the posix device's flash is an
 * image file, so the model is written into slot 0 here instead of being linked into the image
 * as on the Cortex-M boards (ports/qemu-mps2/factory.c), then recorded the same way: the active
 * model, package and sequence FACTORY_PACKAGE, so any later signed package supersedes it.
 * Later boots find the record, or an update that replaced it, and change nothing.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "posix_port.h"
#include "tml/platform.h"
#include "tml/sha.h"
#include "tml/slots.h"

/* Read the whole file into a fresh buffer; NULL if it cannot be read or exceeds max bytes. */
static uint8_t *read_model(const char *path, uint32_t max, uint32_t *size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    uint8_t *buf = malloc((size_t)max + 1);
    size_t n = buf ? fread(buf, 1, (size_t)max + 1, f) : 0;
    fclose(f);
    if (buf == NULL || n == 0 || n > max) {
        free(buf);
        return NULL;
    }
    *size = (uint32_t)n;
    return buf;
}

tml_status_t tml_posix_factory_adopt(const char *path, uint32_t package)
{
    tml_slots_t s;
    tml_status_t st = tml_slots_load(&s);
    if (st != TML_OK) {
        return st;
    }
    if (s.meta.active != TML_SLOT_NONE || s.meta.trial != TML_SLOT_NONE || s.meta.slot[0].valid) {
        return TML_OK; /* not the first boot: keep what runs */
    }
    uint32_t area = tml_platform_flash_size(TML_AREA_SLOT0), size = 0;
    uint8_t *model = read_model(path, area, &size);
    if (model == NULL) {
        return TML_ERR_ARG;
    }
    st = tml_platform_flash_erase(TML_AREA_SLOT0, 0, area);
    if (st == TML_OK) {
        st = tml_platform_flash_write(TML_AREA_SLOT0, 0, model, size);
    }
    if (st == TML_OK) {
        s.meta.slot[0].sequence = package;
        s.meta.slot[0].size = size;
        s.meta.slot[0].package_id = package;
        tml_sha256(model, size, s.meta.slot[0].sha256);
        s.meta.slot[0].valid = 1;
        s.meta.active = 0;
        st = tml_slots_save(&s);
    }
    free(model);
    return st;
}
