//! Ethernet ports: lookup, configuration, RX/TX queues.
//!
//! Ownership model: a configured device is owned by one [`Port`] (a second
//! `configure` of the same id fails while the first handle or any of its
//! queues lives). Each queue is handed out once at a time as an
//! [`RxQueue`]/[`TxQueue`]; those are `Send` but not `Sync`, so exactly one
//! thread polls a queue, which is the rule DPDK's burst functions rely on.
//! `stop`/`close` refuse to run while queue handles exist, so no core can be
//! inside `rx_burst` while the PMD tears its queues down. When the last
//! handle goes, the device is stopped and closed.
//!
//! A `net_ring` port made by [`PortId::from_rings`] works on rings the
//! application holds the other ends of. The PMD keeps raw pointers to them, so
//! the port holds a reference to each until the device is closed (by the
//! `Port` configured on it), which is when nothing can poll them any more.

use std::cell::Cell;
use std::ffi::{CStr, CString, c_char};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dpdk_sys as sys;

use crate::burst::MbufBurst;
use crate::eal::Live;
use crate::error::{Error, Result, rte_errno, strerror};
use crate::mempool::Mempool;
use crate::ring::{End, LentEnd, MbufRing};

const MAX_PORTS: usize = sys::RTE_MAX_ETHPORTS as usize;

/// Ports currently owned by a `Port` handle (or its queues).
static CLAIMED: [AtomicBool; MAX_PORTS] = [const { AtomicBool::new(false) }; MAX_PORTS];

/// The rings lent to each `net_ring` port [`PortId::from_rings`] made, until the device is
/// closed: its PMD holds raw pointers to them.
static RING_PORTS: Mutex<Vec<RingPort>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct RingPort {
    port: u16,
    /// The vdev's name, to remove the vdev once the port is closed.
    vdev: CString,
    _ends: Vec<LentEnd>,
}

fn ring_ports() -> MutexGuard<'static, Vec<RingPort>> {
    // Every update is a single push or remove: a panic cannot leave the list half-updated.
    RING_PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A DPDK ethdev port number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "port {}", self.0)
    }
}

impl PortId {
    /// Find a port by device name: a vdev name such as `net_af_packet0` or
    /// `net_ring0`, or a PCI address such as `0000:03:00.0`.
    pub fn by_name(name: &str) -> Result<PortId> {
        let _live = Live::acquire()?;
        let cname = CString::new(name).map_err(|_| Error::NotFound(name.to_string()))?;
        let mut id = 0u16;
        // SAFETY: EAL running; cname is a valid C string; id is a valid out pointer.
        let rc = unsafe { sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if rc == 0 {
            Ok(PortId(id))
        } else {
            Err(Error::NotFound(format!("port {name:?}")))
        }
    }

    /// Number of ports available to the application (0 if the EAL is not running).
    pub fn count_avail() -> u16 {
        let Ok(_live) = Live::acquire() else {
            return 0;
        };
        // SAFETY: EAL running; no arguments.
        unsafe { sys::rte_eth_dev_count_avail() }
    }

    /// All available ports in id order (`RTE_ETH_FOREACH_DEV`).
    pub fn all() -> Vec<PortId> {
        let mut out = Vec::new();
        let Ok(_live) = Live::acquire() else {
            return out;
        };
        let next = |from: u16| -> u64 {
            // SAFETY: EAL running; any port number is accepted.
            unsafe { sys::rte_eth_find_next_owned_by(from, u64::from(sys::RTE_ETH_DEV_NO_OWNER)) }
        };
        let mut p = next(0);
        while p < MAX_PORTS as u64 {
            // p < RTE_MAX_ETHPORTS, so it fits in u16.
            out.push(PortId(p as u16));
            p = next(p as u16 + 1);
        }
        out
    }

    /// Create a virtual device at run time (`rte_vdev_init`), e.g.
    /// `("net_af_packet0", "iface=cgn-in")`, and return its port.
    pub fn create_vdev(name: &str, args: &str) -> Result<PortId> {
        let _live = Live::acquire()?;
        let cname = CString::new(name)
            .map_err(|_| Error::InvalidArg(format!("vdev name contains NUL: {name:?}")))?;
        let cargs = CString::new(args)
            .map_err(|_| Error::InvalidArg(format!("vdev args contain NUL: {args:?}")))?;
        // SAFETY: EAL running; both are valid C strings that DPDK copies.
        let rc = unsafe { sys::rte_vdev_init(cname.as_ptr(), cargs.as_ptr()) };
        if rc < 0 {
            return Err(Error::Eal {
                code: -rc,
                msg: format!(
                    "rte_vdev_init({name}, {args}): {}",
                    crate::error::strerror(rc)
                ),
            });
        }
        PortId::by_name(name)
    }

    /// Create a `net_ring` port over rings the caller holds the other ends of
    /// (`rte_eth_from_rings`): RX queue `i` dequeues from `rx[i]` and TX queue `i` enqueues to
    /// `tx[i]`, so mbufs enqueued on an RX ring are what [`RxQueue::rx_burst`] receives, and
    /// what [`TxQueue::tx_burst`] sends can be dequeued from a TX ring. (A `--vdev net_ring0`
    /// loops its TX back to its own RX instead.) The device is named `net_ring_<name>`;
    /// configure it with [`Port::configure`], with up to `rx.len()` RX and `tx.len()` TX queues.
    ///
    /// # Lifetime
    ///
    /// The PMD keeps raw pointers to the rings, so the port holds a reference to each (a clone
    /// of the `Arc`) until the device is closed: by [`Port::close`], or when the `Port`
    /// configured on it and all its queues are dropped. The caller's `Arc`s may go first; a ring
    /// is freed (with any mbufs still in it) once the caller's references and the port's are all
    /// gone. A port that is never configured (or whose configuration failed and is not retried)
    /// keeps its rings, and with them the EAL (cleanup is skipped), until the process exits.
    ///
    /// # Ends
    ///
    /// Each RX queue is a consumer of its ring and each TX queue a producer; the other ends are
    /// the caller's. On a single-consumer RX ring (single-producer TX ring) the port's queue must
    /// be the only consumer (producer), so the port takes that end for itself until it is
    /// closed: [`MbufRing::dequeue_burst`] on such an RX ring ([`MbufRing::enqueue_burst`] on
    /// such a TX ring) returns 0 meanwhile, and lending the end a second time (to another queue
    /// or port) is refused. One ring may be both an RX and a TX ring of a port (a loopback).
    ///
    /// Fails if a direction has no ring or more than 16, if `name` is too long for DPDK
    /// (`net_ring_<name>` within 28 bytes), if a device of that name exists, or if an end is
    /// taken.
    pub fn from_rings(name: &str, rx: &[&Arc<MbufRing>], tx: &[&Arc<MbufRing>]) -> Result<PortId> {
        let _live = Live::acquire()?;
        let vdev = format!("net_ring_{name}");
        let (cname, cvdev) = match (CString::new(name), CString::new(vdev.as_str())) {
            (Ok(n), Ok(v)) => (n, v),
            _ => {
                return Err(Error::InvalidArg(format!(
                    "net_ring name contains NUL: {name:?}"
                )));
            }
        };
        // The PMD's per-queue state is a fixed array of this many entries per direction, and
        // rte_eth_from_rings only checks the RX count.
        let dirs = [
            ("RX", rx, End::Consumer, sys::RTE_PMD_RING_MAX_RX_RINGS),
            ("TX", tx, End::Producer, sys::RTE_PMD_RING_MAX_TX_RINGS),
        ];
        let mut ends = Vec::with_capacity(rx.len() + tx.len());
        for (dir, rings, end, max) in dirs {
            if rings.is_empty() || rings.len() > max as usize {
                return Err(Error::InvalidArg(format!(
                    "{vdev}: {} {dir} rings, net_ring takes 1 to {max}",
                    rings.len()
                )));
            }
            for (i, ring) in rings.iter().enumerate() {
                let lent = LentEnd::new(ring, end).ok_or_else(|| {
                    let which = match end {
                        End::Consumer => "consumer",
                        End::Producer => "producer",
                    };
                    Error::InvalidArg(format!(
                        "{vdev}: {dir} ring {i} is single-{which} and its {which} end is taken \
                         (by a queue of a net_ring port, or a call in progress)"
                    ))
                })?;
                ends.push(lent);
            }
        }
        let raw: Vec<*mut sys::rte_ring> = ends.iter().map(LentEnd::raw).collect();
        let (rx_raw, tx_raw) = raw.split_at(rx.len());
        // rte_eth_from_rings takes the socket as unsigned; SOCKET_ID_ANY (-1) wraps to the value
        // DPDK recognises.
        let socket = rx[0].socket_id() as u32;

        // Held until the device and its rings are on the list, so a port closing meanwhile
        // cannot take this one's entry for its own (see PortInner::stop_and_close).
        let mut ring_ports = ring_ports();
        if PortId::by_name(&vdev).is_ok() {
            return Err(Error::InvalidArg(format!("a device {vdev} exists already")));
        }
        // SAFETY: EAL running; cname is a valid C string DPDK copies; rx_raw and tx_raw hold
        // rx.len() and tx.len() pointers (1 to the PMD's maximum each, checked above) to live
        // rings, which `ends` keeps alive and which go on RING_PORTS with the new device for as
        // long as it exists. The PMD copies both arrays.
        let rc = unsafe {
            sys::rte_eth_from_rings(
                cname.as_ptr(),
                rx_raw.as_ptr(),
                rx.len() as u32,
                tx_raw.as_ptr(),
                tx.len() as u32,
                socket,
            )
        };
        if rc >= 0 {
            // A port number, below RTE_MAX_ETHPORTS.
            let port = rc as u16;
            ring_ports.push(RingPort {
                port,
                vdev: cvdev,
                _ends: ends,
            });
            return Ok(PortId(port));
        }
        let code = rte_errno();
        // DPDK reports failure after creating the device only if it then cannot find it by
        // name; should a device exist after all, it holds the pointers, so it keeps the rings.
        if let Ok(id) = PortId::by_name(&vdev) {
            ring_ports.push(RingPort {
                port: id.0,
                vdev: cvdev,
                _ends: ends,
            });
        }
        Err(Error::Eal {
            code,
            msg: format!("rte_eth_from_rings({vdev}): {}", strerror(code)),
        })
    }

    /// True if DPDK knows this port.
    pub fn is_valid(self) -> bool {
        let Ok(_live) = Live::acquire() else {
            return false;
        };
        // SAFETY: EAL running; any port number is accepted.
        unsafe { sys::rte_eth_dev_is_valid_port(self.0) == 1 }
    }
}

/// How to set a port up. `Default` is one RX and one TX queue, 1024
/// descriptors each, the device's default MTU, promiscuous, no RSS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub rx_queues: u16,
    pub tx_queues: u16,
    /// Requested descriptors per RX queue; clamped to what the device allows.
    pub rx_desc: u16,
    /// Requested descriptors per TX queue; clamped to what the device allows.
    pub tx_desc: u16,
    /// MTU to set; `None` keeps the device default (1500 for most).
    pub mtu: Option<u16>,
    /// Receive frames for any destination MAC (needed on af_packet ports).
    pub promiscuous: bool,
    /// Spread received packets over the RX queues by a hash of the source
    /// and destination IP addresses (no ports). Only applied when
    /// `rx_queues > 1` and the device supports address hashing; see
    /// [`Port::rss_enabled`] for the outcome.
    pub rss: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            mtu: None,
            promiscuous: true,
            rss: false,
        }
    }
}

/// Link state as reported without waiting (`rte_eth_link_get_nowait`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    /// Speed in Mbit/s; 0 when unknown or down.
    pub speed_mbps: u32,
    pub full_duplex: bool,
    pub autoneg: bool,
}

/// Basic port counters (`rte_eth_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// Dropped by the NIC because RX descriptors were full (we polled too slowly).
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    /// RX failed because the mempool was empty.
    pub rx_nombuf: u64,
}

#[derive(Debug)]
struct QueueClaims {
    rx: Vec<bool>,
    tx: Vec<bool>,
}

impl QueueClaims {
    fn outstanding(&self) -> usize {
        self.rx.iter().chain(&self.tx).filter(|&&t| t).count()
    }
}

#[derive(Debug)]
struct PortInner {
    id: u16,
    socket: i32,
    nb_rx: u16,
    nb_tx: u16,
    rx_desc: u16,
    tx_desc: u16,
    rss_hf: u64,
    driver: String,
    claims: Mutex<QueueClaims>,
    closed: AtomicBool,
    /// Handles on the RX queues' pools: the PMD allocates from them on every receive burst, so
    /// they must not be freed before the device is closed. Dropped after [`Drop::drop`] has
    /// closed it (fields drop after the body), or never if the close failed.
    pools: Vec<Mempool>,
    _live: Live,
}

impl PortInner {
    fn claims(&self) -> MutexGuard<'_, QueueClaims> {
        // A panic while holding the lock cannot leave the flags half-updated
        // (each update is a single store), so poisoning is ignored.
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn port_err(&self, op: &'static str, code: i32) -> Error {
        Error::Port {
            port: self.id,
            op,
            code,
        }
    }

    fn stop_and_close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // SAFETY: we own the port and no queue handle exists (callers
        // guarantee), so no thread is inside a burst call.
        let rc = unsafe { sys::rte_eth_dev_stop(self.id) };
        if rc < 0 {
            return Err(self.port_err("rte_eth_dev_stop", rc));
        }
        // Held across the close: DPDK may give the port number to a new device as soon as this
        // one is released, and that device's rings must not be taken for this one's.
        let mut ring_ports = ring_ports();
        // SAFETY: as above; the device is stopped.
        let rc = unsafe { sys::rte_eth_dev_close(self.id) };
        if rc < 0 {
            // A net_ring port keeps its rings: the PMD may still hold them.
            return Err(self.port_err("rte_eth_dev_close", rc));
        }
        if let Some(i) = ring_ports.iter().position(|p| p.port == self.id) {
            // The device is released with its queues, so nothing refers to the rings any more.
            let ring_port = ring_ports.swap_remove(i);
            // SAFETY: EAL running (self holds a Live token); a valid C string. With the ethdev
            // gone the PMD's remove only has the vdev to forget, which frees its name.
            unsafe { sys::rte_vdev_uninit(ring_port.vdev.as_ptr()) };
            drop(ring_ports);
            drop(ring_port);
        }
        Ok(())
    }
}

impl Drop for PortInner {
    fn drop(&mut self) {
        // The last handle is gone: nothing can poll the queues any more.
        // Closing returns the mbufs parked in RX descriptors to their pools.
        if self.stop_and_close().is_err() {
            // The device may still refer to its pools: never free them.
            for p in self.pools.drain(..) {
                std::mem::forget(p);
            }
        }
        CLAIMED[usize::from(self.id)].store(false, Ordering::Release);
    }
}

/// A configured port. `Send + Sync`: configuration, start/stop, stats and
/// link queries are control-plane calls. The device is stopped and closed
/// when the `Port` and all its queues are gone.
#[derive(Debug)]
pub struct Port {
    inner: Arc<PortInner>,
}

fn claim_port(id: u16) -> Result<()> {
    let slot = CLAIMED
        .get(usize::from(id))
        .ok_or_else(|| Error::NotFound(format!("port {id}")))?;
    if slot
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(Error::InvalidArg(format!(
            "port {id} is already configured by a live Port handle"
        )));
    }
    Ok(())
}

impl Port {
    /// Configure `id` with every RX queue filling from `pool`; see
    /// [`Port::configure_with_pools`].
    pub fn configure(id: PortId, conf: &PortConfig, pool: &Mempool) -> Result<Port> {
        Port::configure_with_pools(id, conf, &[pool])
    }

    /// Configure the device and set up its queues (not started).
    ///
    /// `pools` has one pool for all RX queues or one per RX queue. The port
    /// keeps a handle on each until the device is closed, so the caller may
    /// drop its own handles at any time.
    /// Queue counts must be within the device's limits; descriptor counts
    /// are clamped to them. RSS is requested as documented on
    /// [`PortConfig::rss`].
    pub fn configure_with_pools(id: PortId, conf: &PortConfig, pools: &[&Mempool]) -> Result<Port> {
        let live = Live::acquire()?;
        let port = id.0;
        let perr = |op: &'static str, code: i32| Error::Port { port, op, code };
        // SAFETY: EAL running; any port number is accepted.
        if unsafe { sys::rte_eth_dev_is_valid_port(port) } != 1 {
            return Err(Error::NotFound(format!("port {port}")));
        }
        if conf.rx_queues == 0 && conf.tx_queues == 0 {
            return Err(Error::InvalidArg(format!(
                "port {port}: no queues requested"
            )));
        }
        if pools.is_empty() || (pools.len() != 1 && pools.len() != usize::from(conf.rx_queues)) {
            return Err(Error::InvalidArg(format!(
                "port {port}: need 1 or {} mempools, got {}",
                conf.rx_queues,
                pools.len()
            )));
        }

        claim_port(port)?;
        // From here on, failure must release the claim; building the inner
        // value early makes its Drop do that. It starts out marked closed so
        // a failed configuration leaves the device in DPDK for a retry.
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid port; info is a valid out pointer.
        let rc = unsafe { sys::rte_eth_dev_info_get(port, &mut info) };
        if rc != 0 {
            CLAIMED[usize::from(port)].store(false, Ordering::Release);
            drop(live);
            return Err(perr("rte_eth_dev_info_get", rc));
        }
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: non-null driver names are static C strings of the PMD.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
        let mut inner = PortInner {
            id: port,
            socket,
            nb_rx: conf.rx_queues,
            nb_tx: conf.tx_queues,
            rx_desc: conf.rx_desc,
            tx_desc: conf.tx_desc,
            rss_hf: 0,
            driver,
            claims: Mutex::new(QueueClaims {
                rx: vec![false; usize::from(conf.rx_queues)],
                tx: vec![false; usize::from(conf.tx_queues)],
            }),
            closed: AtomicBool::new(true),
            pools: pools.iter().map(|&p| p.clone()).collect(),
            _live: live,
        };

        if conf.rx_queues > info.max_rx_queues || conf.tx_queues > info.max_tx_queues {
            return Err(Error::InvalidArg(format!(
                "port {port} ({}): {} RX / {} TX queues requested, device allows {} / {}",
                inner.driver,
                conf.rx_queues,
                conf.tx_queues,
                info.max_rx_queues,
                info.max_tx_queues
            )));
        }

        let mut eth_conf = sys::rte_eth_conf::default();
        if let Some(mtu) = conf.mtu {
            if mtu < info.min_mtu || mtu > info.max_mtu {
                return Err(Error::InvalidArg(format!(
                    "port {port}: MTU {mtu} outside device range {}..={}",
                    info.min_mtu, info.max_mtu
                )));
            }
            // Without scatter, a full frame must fit one mbuf.
            let frame = u32::from(mtu) + sys::RTE_ETHER_HDR_LEN + sys::RTE_ETHER_CRC_LEN;
            for p in pools {
                let room = pool_data_room(p);
                if frame > room {
                    return Err(Error::InvalidArg(format!(
                        "port {port}: MTU {mtu} needs {frame}-byte buffers, mempool {} has {room}",
                        p.name()
                    )));
                }
            }
            eth_conf.rxmode.mtu = u32::from(mtu);
        }
        if conf.rss && conf.rx_queues > 1 {
            // SAFETY: reading constants exported by the C helper.
            let (want_ip, rss_hash_offload) =
                unsafe { (sys::cgnat_eth_rss_ip, sys::cgnat_eth_rx_offload_rss_hash) };
            // Address-only hash types (RTE_ETH_RSS_IP), never the L4 ones, so
            // all packets between two hosts, fragments included, land on one
            // queue. NICs that classify TCP/UDP as separate hash types (e.g.
            // i40e) leave those on queue 0; the data plane's handoff rings
            // cover that, as they cover any other misplacement.
            let hf = want_ip & info.flow_type_rss_offloads;
            if hf != 0 {
                eth_conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
                eth_conf.rx_adv_conf.rss_conf.rss_hf = hf;
                eth_conf.rxmode.offloads |= rss_hash_offload & info.rx_offload_capa;
                inner.rss_hf = hf;
            }
        }

        // SAFETY: valid port, eth_conf fully initialised.
        let mut rc =
            unsafe { sys::rte_eth_dev_configure(port, conf.rx_queues, conf.tx_queues, &eth_conf) };
        if rc == -libc::EBUSY {
            // A previous owner left the device running; DPDK only
            // reconfigures stopped devices.
            // SAFETY: we hold the claim, so no queue handle of this port
            // exists and no thread is in a burst call.
            rc = unsafe { sys::rte_eth_dev_stop(port) };
            if rc == 0 {
                // SAFETY: as above, now stopped.
                rc = unsafe {
                    sys::rte_eth_dev_configure(port, conf.rx_queues, conf.tx_queues, &eth_conf)
                };
            }
        }
        if rc != 0 {
            return Err(perr("rte_eth_dev_configure", rc));
        }
        let (mut rxd, mut txd) = (conf.rx_desc, conf.tx_desc);
        // SAFETY: valid configured port; valid in/out pointers.
        let rc = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port, &mut rxd, &mut txd) };
        if rc != 0 {
            return Err(perr("rte_eth_dev_adjust_nb_rx_tx_desc", rc));
        }
        inner.rx_desc = rxd;
        inner.tx_desc = txd;
        // rte_eth_*_queue_setup takes the socket as unsigned; SOCKET_ID_ANY
        // (-1) wraps to the value DPDK recognises.
        let qsocket = socket as u32;

        let mut rxconf = info.default_rxconf;
        rxconf.offloads = eth_conf.rxmode.offloads;
        for q in 0..conf.rx_queues {
            let pool = if pools.len() == 1 {
                pools[0]
            } else {
                pools[usize::from(q)]
            };
            // SAFETY: configured port, q < nb_rx, rxconf initialised, pool alive.
            let rc = unsafe {
                sys::rte_eth_rx_queue_setup(port, q, rxd, qsocket, &rxconf, pool.as_raw())
            };
            if rc != 0 {
                return Err(perr("rte_eth_rx_queue_setup", rc));
            }
        }
        let mut txconf = info.default_txconf;
        txconf.offloads = eth_conf.txmode.offloads;
        for q in 0..conf.tx_queues {
            // SAFETY: configured port, q < nb_tx, txconf initialised.
            let rc = unsafe { sys::rte_eth_tx_queue_setup(port, q, txd, qsocket, &txconf) };
            if rc != 0 {
                return Err(perr("rte_eth_tx_queue_setup", rc));
            }
        }
        if conf.promiscuous {
            // SAFETY: configured port.
            let rc = unsafe { sys::rte_eth_promiscuous_enable(port) };
            // Devices without a MAC filter (ring, null) answer ENOTSUP: they
            // already see every frame.
            if rc != 0 && rc != -libc::ENOTSUP {
                return Err(perr("rte_eth_promiscuous_enable", rc));
            }
        }
        inner.closed.store(false, Ordering::Release);
        Ok(Port {
            inner: Arc::new(inner),
        })
    }

    /// Start the device (`rte_eth_dev_start`).
    pub fn start(&self) -> Result<()> {
        let _claims = self.inner.claims();
        // SAFETY: configured port owned by this handle.
        let rc = unsafe { sys::rte_eth_dev_start(self.inner.id) };
        if rc != 0 {
            return Err(self.inner.port_err("rte_eth_dev_start", rc));
        }
        Ok(())
    }

    /// Stop the device. Fails with `-EBUSY` while any [`RxQueue`] or
    /// [`TxQueue`] of this port exists: drop them (stop the workers) first.
    pub fn stop(&self) -> Result<()> {
        // Holding the lock keeps queues from being handed out mid-stop.
        let claims = self.inner.claims();
        if claims.outstanding() > 0 {
            return Err(self
                .inner
                .port_err("rte_eth_dev_stop (queue handles still held)", -libc::EBUSY));
        }
        // SAFETY: no queue handle exists, so no thread is in a burst call.
        let rc = unsafe { sys::rte_eth_dev_stop(self.inner.id) };
        if rc != 0 {
            return Err(self.inner.port_err("rte_eth_dev_stop", rc));
        }
        Ok(())
    }

    /// Stop and close the device, releasing it. Fails with `-EBUSY` if
    /// queue handles still exist; the device is then closed when the last of
    /// them is dropped.
    pub fn close(self) -> Result<()> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.stop_and_close(),
            Err(shared) => {
                Err(shared.port_err("rte_eth_dev_close (queue handles still held)", -libc::EBUSY))
            }
        }
    }

    /// The port number.
    pub fn id(&self) -> PortId {
        PortId(self.inner.id)
    }

    /// Number of RX queues configured.
    pub fn rx_queues(&self) -> u16 {
        self.inner.nb_rx
    }

    /// Number of TX queues configured.
    pub fn tx_queues(&self) -> u16 {
        self.inner.nb_tx
    }

    /// RX and TX descriptor counts actually used (after clamping).
    pub fn desc_counts(&self) -> (u16, u16) {
        (self.inner.rx_desc, self.inner.tx_desc)
    }

    /// True if RSS was enabled (see [`PortConfig::rss`]).
    pub fn rss_enabled(&self) -> bool {
        self.inner.rss_hf != 0
    }

    /// The RSS hash types enabled (`RTE_ETH_RSS_*` bits), 0 without RSS.
    pub fn rss_hf(&self) -> u64 {
        self.inner.rss_hf
    }

    /// The port's MAC address (all zero if the PMD cannot tell).
    pub fn mac_addr(&self) -> [u8; 6] {
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: configured port; valid out pointer.
        let rc = unsafe { sys::rte_eth_macaddr_get(self.inner.id, &mut mac) };
        if rc != 0 { [0; 6] } else { mac.addr_bytes }
    }

    /// The PMD's driver name, e.g. `net_af_packet`.
    pub fn driver_name(&self) -> String {
        self.inner.driver.clone()
    }

    /// The device name, as accepted by [`PortId::by_name`].
    pub fn name(&self) -> String {
        let mut buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: configured port; buf has the RTE_ETH_NAME_MAX_LEN bytes DPDK requires.
        let rc = unsafe { sys::rte_eth_dev_get_name_by_port(self.inner.id, buf.as_mut_ptr()) };
        if rc != 0 {
            return String::new();
        }
        // SAFETY: DPDK wrote a NUL-terminated string into buf.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Current link state, without waiting for autonegotiation.
    pub fn link(&self) -> LinkStatus {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: configured port; valid out pointer.
        let rc = unsafe { sys::rte_eth_link_get_nowait(self.inner.id, &mut link) };
        if rc != 0 {
            return LinkStatus::default();
        }
        let up = u32::from(link.link_status()) == sys::RTE_ETH_LINK_UP;
        LinkStatus {
            up,
            speed_mbps: if link.link_speed == sys::RTE_ETH_SPEED_NUM_UNKNOWN {
                0
            } else {
                link.link_speed
            },
            full_duplex: u32::from(link.link_duplex()) == sys::RTE_ETH_LINK_FULL_DUPLEX,
            autoneg: u32::from(link.link_autoneg()) == sys::RTE_ETH_LINK_AUTONEG,
        }
    }

    /// Port counters (all zero if the PMD cannot report them).
    pub fn stats(&self) -> PortStats {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: configured port; valid out pointer. PMDs read their
        // counters without locks, which DPDK supports concurrently with bursts.
        let rc = unsafe { sys::rte_eth_stats_get(self.inner.id, &mut s) };
        if rc != 0 {
            return PortStats::default();
        }
        PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        }
    }

    /// Zero the port counters.
    pub fn reset_stats(&self) {
        // SAFETY: configured port. Failure (ENOTSUP) leaves counters as they are.
        unsafe { sys::rte_eth_stats_reset(self.inner.id) };
    }

    /// NUMA socket of the device (`SOCKET_ID_ANY`, -1, if unknown).
    pub fn socket_id(&self) -> i32 {
        self.inner.socket
    }

    /// Take RX queue `q`. Fails if `q` is out of range or already taken;
    /// it becomes available again when the returned handle is dropped.
    pub fn rx_queue(&self, q: u16) -> Result<RxQueue> {
        let mut claims = self.inner.claims();
        match claims.rx.get_mut(usize::from(q)) {
            None => Err(Error::InvalidArg(format!(
                "port {}: RX queue {q} not configured ({} queues)",
                self.inner.id, self.inner.nb_rx
            ))),
            Some(true) => Err(Error::InvalidArg(format!(
                "port {}: RX queue {q} is already in use",
                self.inner.id
            ))),
            Some(slot) => {
                *slot = true;
                Ok(RxQueue {
                    port: self.inner.id,
                    queue: q,
                    inner: Arc::clone(&self.inner),
                    _not_sync: PhantomData,
                })
            }
        }
    }

    /// Take TX queue `q`; as [`Port::rx_queue`].
    pub fn tx_queue(&self, q: u16) -> Result<TxQueue> {
        let mut claims = self.inner.claims();
        match claims.tx.get_mut(usize::from(q)) {
            None => Err(Error::InvalidArg(format!(
                "port {}: TX queue {q} not configured ({} queues)",
                self.inner.id, self.inner.nb_tx
            ))),
            Some(true) => Err(Error::InvalidArg(format!(
                "port {}: TX queue {q} is already in use",
                self.inner.id
            ))),
            Some(slot) => {
                *slot = true;
                Ok(TxQueue {
                    port: self.inner.id,
                    queue: q,
                    inner: Arc::clone(&self.inner),
                    _not_sync: PhantomData,
                })
            }
        }
    }
}

/// Data room (bytes after the headroom) of a pktmbuf pool's buffers.
fn pool_data_room(p: &Mempool) -> u32 {
    // SAFETY: the pool is alive and is a pktmbuf pool, whose private area
    // starts with rte_pktmbuf_pool_private (that is what
    // rte_pktmbuf_data_room_size reads; it is inline in C).
    let room = unsafe { sys::rte_pktmbuf_data_room_size(p.as_raw()) };
    u32::from(room).saturating_sub(u32::from(crate::mempool::HEADROOM))
}

/// Exclusive handle to one RX queue. `Send` (move it to the worker that
/// polls it) but not `Sync`: DPDK's RX burst is not safe for concurrent
/// callers on one queue.
#[derive(Debug)]
pub struct RxQueue {
    port: u16,
    queue: u16,
    inner: Arc<PortInner>,
    _not_sync: PhantomData<Cell<()>>,
}

impl RxQueue {
    /// Receive into the burst's free room; returns how many arrived.
    #[inline]
    pub fn rx_burst<const N: usize>(&mut self, burst: &mut MbufBurst<N>) -> usize {
        let room = burst.room().min(usize::from(u16::MAX)) as u16;
        if room == 0 {
            return 0;
        }
        // SAFETY: this handle is the queue's only user (claim + !Sync); the
        // port is configured (inner alive). DPDK writes at most `room` owned
        // mbuf pointers into the burst's spare slots.
        let n = unsafe { sys::rte_eth_rx_burst(self.port, self.queue, burst.spare_ptr(), room) };
        let n = usize::from(n);
        // SAFETY: DPDK initialised n slots with mbufs that are now ours.
        unsafe { burst.assume_pushed(n) };
        n
    }

    /// The port this queue belongs to.
    pub fn port(&self) -> PortId {
        PortId(self.port)
    }

    /// The queue number.
    pub fn queue(&self) -> u16 {
        self.queue
    }
}

impl Drop for RxQueue {
    fn drop(&mut self) {
        if let Some(slot) = self.inner.claims().rx.get_mut(usize::from(self.queue)) {
            *slot = false;
        }
    }
}

/// Exclusive handle to one TX queue; `Send`, not `Sync`, as [`RxQueue`].
#[derive(Debug)]
pub struct TxQueue {
    port: u16,
    queue: u16,
    inner: Arc<PortInner>,
    _not_sync: PhantomData<Cell<()>>,
}

impl TxQueue {
    /// Send from the front of the burst. Sent mbufs leave the burst (the
    /// PMD owns and frees them); unsent ones stay, in order, at the front.
    #[inline]
    pub fn tx_burst<const N: usize>(&mut self, burst: &mut MbufBurst<N>) -> usize {
        let len = burst.len().min(usize::from(u16::MAX)) as u16;
        if len == 0 {
            return 0;
        }
        // SAFETY: exclusive queue user (claim + !Sync); configured port; the
        // first len slots are owned mbufs; DPDK takes ownership of the first
        // n it returns.
        let n = unsafe { sys::rte_eth_tx_burst(self.port, self.queue, burst.raw_ptr(), len) };
        let n = usize::from(n);
        // SAFETY: the first n mbufs now belong to the PMD.
        unsafe { burst.consume_front(n) };
        n
    }

    /// The port this queue belongs to.
    pub fn port(&self) -> PortId {
        PortId(self.port)
    }

    /// The queue number.
    pub fn queue(&self) -> u16 {
        self.queue
    }
}

impl Drop for TxQueue {
    fn drop(&mut self) {
        if let Some(slot) = self.inner.claims().tx.get_mut(usize::from(self.queue)) {
            *slot = false;
        }
    }
}
