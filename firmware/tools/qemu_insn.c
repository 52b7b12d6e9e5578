/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A QEMU TCG plugin that counts executed guest instructions, in total and between marker calls.
 * QEMU models no cycle counter; this gives exact instructions per Invoke() on an emulated
 * Cortex-M. (GPL-2.0-or-later like QEMU's plugin API header it includes; it is a host tool,
 * never linked into the firmware.)
 *
 *   gcc -O2 -shared -fPIC -I<qemu-plugin-api> qemu_insn.c -o qemu_insn.so
 *   qemu-system-arm ... -plugin ./qemu_insn.so,marker=0x<address of tml_probe_marker>
 *
 * Every translated block adds its instruction count to a counter when it starts executing
 * (an inline op: fast). The first instruction of the marker function gets a callback; calls
 * alternate begin / end, and the instructions from one to the next are summed (exact up to the
 * few instructions of the marker function itself). At exit it prints on stderr:
 *   qemu_insn: total=<n> marked=<n> pairs=<n>
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

static uint64_t total, marked, pairs, begin;
static uint64_t marker = UINT64_MAX;
static int inside;

static void on_marker(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    if (!inside) {
        begin = total;
    } else {
        marked += total - begin;
        pairs++;
    }
    inside = !inside;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &total,
                                             qemu_plugin_tb_n_insns(tb));
    for (size_t i = 0; i < qemu_plugin_tb_n_insns(tb); i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        if ((qemu_plugin_insn_vaddr(insn) & ~1ULL) == (marker & ~1ULL)) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_marker, QEMU_PLUGIN_CB_NO_REGS,
                                                   NULL);
        }
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    (void)id;
    (void)p;
    fprintf(stderr, "qemu_insn: total=%" PRIu64 " marked=%" PRIu64 " pairs=%" PRIu64 "\n", total,
            marked, pairs);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "marker=", 7) == 0) {
            marker = strtoull(argv[i] + 7, NULL, 0);
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
