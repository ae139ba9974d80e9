/*
 * The DPDK headers the bindings are generated from. Everything the `dpdk`
 * crate needs is reachable from here; bindgen's allowlists in build.rs keep
 * the generated Rust to the rte_* / RTE_* surface.
 *
 * rte_config.h is force-included by pkg-config's cflags (-include rte_config.h),
 * so it is not repeated here.
 */
#ifndef CGNAT_DPDK_SYS_WRAPPER_H
#define CGNAT_DPDK_SYS_WRAPPER_H

#include <rte_version.h>
#include <rte_errno.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_prefetch.h>
#include <rte_memory.h>
#include <rte_malloc.h>
#include <rte_ring.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ether.h>
#include <rte_ethdev.h>
#include <rte_flow.h>
#include <rte_bus_vdev.h>
/* rte_eth_from_rings: net_ring ports over rings the application owns (librte_net_ring). */
#include <rte_eth_ring.h>

/*
 * Helpers for things that are macros in C, so neither bindgen nor
 * wrap_static_fns can reach them. Defined in helpers.c.
 */

/* rte_errno is a thread-local macro (per_lcore__rte_errno). */
int cgnat_rte_errno(void);

/*
 * Function-like macros (RTE_BIT64) are beyond bindgen's constant evaluator,
 * so the RSS hash-field masks the safe layer uses are exported as values.
 */
extern const uint64_t cgnat_eth_rss_ipv4;
extern const uint64_t cgnat_eth_rss_ip;
extern const uint64_t cgnat_eth_rss_l3_src_only;
extern const uint64_t cgnat_eth_rx_offload_rss_hash;
extern const uint64_t cgnat_eth_tx_offload_mbuf_fast_free;

#endif
