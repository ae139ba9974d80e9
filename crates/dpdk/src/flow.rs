//! Receive-side steering with rte_flow: send packets that match a masked field to one RX queue.
//!
//! The data plane uses it so that a packet reaches the worker that owns its flow without a software
//! handoff: on the outside, by bits of the TCP/UDP destination port (outside ports are owned in
//! blocks); on the inside, by bits of the IPv4 source address (subscribers are owned by address).
//! Devices without rte_flow (af_packet, memif, net_null, many VFs) refuse the rule; the caller
//! then keeps the software handoff. A [`FlowRule`] is removed when dropped.

use std::ffi::CStr;
use std::ptr;

use dpdk_sys as sys;

use crate::error::{Error, Result};
use crate::port::Port;

/// The L4 protocol a destination-port rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

/// What a steering rule matches (values and masks in host byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// IPv4 packets whose `src & mask == value`.
    Ipv4Src { value: u32, mask: u32 },
    /// IPv4 TCP or UDP packets whose `dst_port & mask == value`.
    L4DstPort { proto: L4, value: u16, mask: u16 },
}

/// An installed rule; dropping it removes it from the device.
#[derive(Debug)]
pub struct FlowRule {
    port: u16,
    flow: ptr::NonNull<sys::rte_flow>,
}

// SAFETY: the handle is an opaque pointer owned by the PMD; rte_flow_destroy may be called from any
// thread (rte_flow calls are thread-safe per port when the PMD sets RTE_ETH_DEV_FLOW_OPS_THREAD_SAFE,
// and cgnatd only creates and destroys rules from the control thread).
unsafe impl Send for FlowRule {}

impl Drop for FlowRule {
    fn drop(&mut self) {
        let mut err = sys::rte_flow_error::default();
        // SAFETY: `flow` was returned by rte_flow_create for this port and is destroyed once.
        unsafe { sys::rte_flow_destroy(self.port, self.flow.as_ptr(), &mut err) };
    }
}

fn flow_error(port: u16, op: &'static str, code: i32, err: &sys::rte_flow_error) -> Error {
    let msg = if err.message.is_null() {
        String::from("no message")
    } else {
        // SAFETY: a non-null rte_flow_error message is a NUL-terminated static or PMD-owned string
        // valid until the next rte_flow call on this port.
        unsafe { CStr::from_ptr(err.message) }
            .to_string_lossy()
            .into_owned()
    };
    Error::Flow {
        port,
        op,
        code,
        msg,
    }
}

impl Port {
    /// Steer packets matching `m` to RX `queue`. Validates first, so an unsupported rule fails
    /// cleanly without touching the device. The port must be started.
    pub fn steer(&self, m: Match, queue: u16) -> Result<FlowRule> {
        let port = self.id().0;
        if queue >= self.rx_queues() {
            return Err(Error::InvalidArg(format!(
                "port {port}: no rx queue {queue}"
            )));
        }
        let mut attr = sys::rte_flow_attr::default();
        attr.set_ingress(1);
        let mut ip_spec = sys::rte_flow_item_ipv4::default();
        let mut ip_mask = sys::rte_flow_item_ipv4::default();
        let mut udp_spec = sys::rte_flow_item_udp::default();
        let mut udp_mask = sys::rte_flow_item_udp::default();
        let mut tcp_spec = sys::rte_flow_item_tcp::default();
        let mut tcp_mask = sys::rte_flow_item_tcp::default();
        let item = |type_, spec: *const std::ffi::c_void, mask: *const std::ffi::c_void| {
            sys::rte_flow_item {
                type_,
                spec,
                last: ptr::null(),
                mask,
            }
        };
        let mut pattern = vec![item(sys::RTE_FLOW_ITEM_TYPE_ETH, ptr::null(), ptr::null())];
        match m {
            Match::Ipv4Src { value, mask } => {
                ip_spec.hdr.src_addr = (value & mask).to_be();
                ip_mask.hdr.src_addr = mask.to_be();
                pattern.push(item(
                    sys::RTE_FLOW_ITEM_TYPE_IPV4,
                    (&raw const ip_spec).cast(),
                    (&raw const ip_mask).cast(),
                ));
            }
            Match::L4DstPort { proto, value, mask } => {
                pattern.push(item(sys::RTE_FLOW_ITEM_TYPE_IPV4, ptr::null(), ptr::null()));
                match proto {
                    L4::Udp => {
                        udp_spec.hdr.dst_port = (value & mask).to_be();
                        udp_mask.hdr.dst_port = mask.to_be();
                        pattern.push(item(
                            sys::RTE_FLOW_ITEM_TYPE_UDP,
                            (&raw const udp_spec).cast(),
                            (&raw const udp_mask).cast(),
                        ));
                    }
                    L4::Tcp => {
                        tcp_spec.hdr.dst_port = (value & mask).to_be();
                        tcp_mask.hdr.dst_port = mask.to_be();
                        pattern.push(item(
                            sys::RTE_FLOW_ITEM_TYPE_TCP,
                            (&raw const tcp_spec).cast(),
                            (&raw const tcp_mask).cast(),
                        ));
                    }
                }
            }
        }
        pattern.push(item(sys::RTE_FLOW_ITEM_TYPE_END, ptr::null(), ptr::null()));
        let q = sys::rte_flow_action_queue { index: queue };
        let actions = [
            sys::rte_flow_action {
                type_: sys::RTE_FLOW_ACTION_TYPE_QUEUE,
                conf: (&raw const q).cast(),
            },
            sys::rte_flow_action {
                type_: sys::RTE_FLOW_ACTION_TYPE_END,
                conf: ptr::null(),
            },
        ];
        let mut err = sys::rte_flow_error::default();
        // SAFETY: attr, pattern (END-terminated) and actions (END-terminated) and every spec/mask
        // they point to live until the end of this function; DPDK copies what it keeps.
        let rc = unsafe {
            sys::rte_flow_validate(port, &attr, pattern.as_ptr(), actions.as_ptr(), &mut err)
        };
        if rc != 0 {
            return Err(flow_error(port, "rte_flow_validate", rc, &err));
        }
        // SAFETY: as above.
        let flow = unsafe {
            sys::rte_flow_create(port, &attr, pattern.as_ptr(), actions.as_ptr(), &mut err)
        };
        match ptr::NonNull::new(flow) {
            Some(flow) => Ok(FlowRule { port, flow }),
            None => Err(flow_error(
                port,
                "rte_flow_create",
                crate::rte_errno(),
                &err,
            )),
        }
    }
}

/// Rules that steer every packet of a worker-owned flow to that worker's queue, or the reason the
/// device cannot. `workers` must be a power of two (the ownership functions are then bit masks).
pub struct Steering {
    pub rules: Vec<FlowRule>,
}

impl Steering {
    /// Inside port: subscriber `addr` belongs to worker `addr & (workers - 1)`.
    pub fn inside(port: &Port, workers: u16) -> Result<Steering> {
        Self::install(port, workers, |w, mask| {
            vec![Match::Ipv4Src {
                value: u32::from(w),
                mask: u32::from(mask),
            }]
        })
    }

    /// Outside port: outside port `p` belongs to worker `(p >> block_shift) & (workers - 1)`.
    pub fn outside(port: &Port, workers: u16, block_shift: u32) -> Result<Steering> {
        Self::install(port, workers, |w, mask| {
            [L4::Udp, L4::Tcp]
                .into_iter()
                .map(|proto| Match::L4DstPort {
                    proto,
                    value: w << block_shift,
                    mask: mask << block_shift,
                })
                .collect()
        })
    }

    fn install(
        port: &Port,
        workers: u16,
        matches: impl Fn(u16, u16) -> Vec<Match>,
    ) -> Result<Steering> {
        if workers < 2 || !workers.is_power_of_two() {
            return Err(Error::InvalidArg(format!(
                "rte_flow steering needs a power-of-two worker count above 1, not {workers}"
            )));
        }
        let mut rules = Vec::new();
        for w in 0..workers {
            for m in matches(w, workers - 1) {
                // On failure the rules created so far are dropped, which removes them.
                rules.push(port.steer(m, w)?);
            }
        }
        Ok(Steering { rules })
    }
}
