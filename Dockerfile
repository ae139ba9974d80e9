# cgnat container image: cgnatd (ENTRYPOINT) and cgnatctl on Debian 12 with Debian's DPDK 22.11.
#
#   docker build -t cgnat .
#
# Running it. DPDK needs the host's hugepages, the NIC bound to vfio-pci, and the privileges
# to use them; the simplest form is
#
#   docker run --rm --privileged --network host \
#     -v /dev/hugepages:/dev/hugepages -v /dev/vfio:/dev/vfio -v /sys/bus/pci:/sys/bus/pci \
#     -v /etc/cgnat/cgnat.yaml:/etc/cgnat/cgnat.yaml:ro cgnat
#
# Without --privileged: --cap-add NET_ADMIN --cap-add IPC_LOCK --cap-add SYS_RAWIO
# (plus SYS_ADMIN if the PMD needs it), --ulimit memlock=-1, --device /dev/vfio/vfio and
# --device /dev/vfio/<iommu group of the NIC>, and the /dev/hugepages mount. The management
# API listens where the config says (mgmt.listen, default 127.0.0.1:50051): use
# --network host, or set mgmt.listen to 0.0.0.0:50051 and publish the port.
# The namespace lab (net_af_packet on veth) needs --network host and --privileged.

# ---- build ----
FROM rust:1-bookworm AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libdpdk-dev pkg-config clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p cgnatd \
 && install -D -m 0755 target/release/cgnatd /out/cgnatd \
 && install -D -m 0755 target/release/cgnatctl /out/cgnatctl

# ---- runtime ----
FROM debian:12-slim
# The DPDK libraries cgnatd links against, the bus and mempool drivers EAL loads as plugins,
# and the PMDs for the usual NICs (Intel ixgbe/i40e/ice/iavf, Mellanox mlx5, virtio,
# vmxnet3) plus af_packet for the lab. Add librte-net-*23 packages for other NICs.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        librte-eal23 librte-ethdev23 librte-mbuf23 librte-mempool23 librte-ring23 \
        librte-net23 librte-kvargs23 librte-telemetry23 librte-meter23 libnuma1 \
        librte-bus-pci23 librte-bus-vdev23 librte-mempool-ring23 \
        librte-net-af-packet23 librte-net-ixgbe23 librte-net-i40e23 librte-net-ice23 \
        librte-net-iavf23 librte-net-mlx5-23 librte-net-virtio23 librte-net-vmxnet3-23 \
        iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/cgnatd /out/cgnatctl /usr/local/bin/
COPY config/ /usr/share/cgnat/
# A starting point; mount the real config over it.
COPY config/example-nic.yaml /etc/cgnat/cgnat.yaml
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=5s CMD ["cgnatctl", "health"]
ENTRYPOINT ["cgnatd"]
CMD ["--config", "/etc/cgnat/cgnat.yaml"]
