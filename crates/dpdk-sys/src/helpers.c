/*
 * C helpers for DPDK features that are preprocessor macros and therefore
 * invisible to bindgen (see wrapper.h). Compiled by build.rs with the same
 * pkg-config cflags as the generated static-inline wrappers.
 */
#include "wrapper.h"

int cgnat_rte_errno(void)
{
	return rte_errno;
}

const uint64_t cgnat_eth_rss_ipv4 = RTE_ETH_RSS_IPV4;
const uint64_t cgnat_eth_rss_ip = RTE_ETH_RSS_IP;
const uint64_t cgnat_eth_rss_l3_src_only = RTE_ETH_RSS_L3_SRC_ONLY;
const uint64_t cgnat_eth_rx_offload_rss_hash = RTE_ETH_RX_OFFLOAD_RSS_HASH;
const uint64_t cgnat_eth_tx_offload_mbuf_fast_free = RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
