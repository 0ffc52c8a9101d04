# hydra-compose inspect probe: prints raw facts in "==section" blocks (a tool's output may lack its last
# newline: an echo follows it, so the next marker starts its own line); parsed on the
# inspecting machine. Read-only; needs nothing but a POSIX shell and the GPU tools
# that happen to be installed. HYDRA_SYSFS_ROOT points sysfs elsewhere (tests).
sys=${HYDRA_SYSFS_ROOT:-/sys}
echo "==hostname"; hostname 2>/dev/null || cat /etc/hostname
echo "==addresses"; { hostname -I 2>/dev/null \
  || { command -v ip >/dev/null && ip -o -4 addr show | awk '{split($4,a,"/"); print a[1]}'; } \
  || ifconfig 2>/dev/null | awk '$1 == "inet" { print $2 }'; } | tr ' ' '\n' | grep -v '^$'
echo "==os"; uname -s
echo "==cores"; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
echo "==apple"; [ "$(uname -s)" = Darwin ] && sysctl -n machdep.cpu.brand_string hw.memsize 2>/dev/null
echo "==meminfo"; grep MemTotal /proc/meminfo
echo "==disk"; df -Pk . 2>/dev/null | tail -1
echo "==docker"; docker version --format '{{.Server.Version}}' 2>/dev/null
echo "==docker_runtimes"; docker info --format '{{json .Runtimes}}' 2>/dev/null
echo "==kfd"; [ -e /dev/kfd ] && echo present
echo "==groups"; getent group video render 2>/dev/null
echo "==cdi"; grep -hos '"kind": *"amd.com/gpu"' /etc/cdi/*.json /etc/cdi/*.yaml /var/run/cdi/*.json /var/run/cdi/*.yaml 2>/dev/null | head -1
echo "==rocm_version"; cat "${HYDRA_ROCM_ROOT:-/opt/rocm}/.info/version" 2>/dev/null | head -1
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "==nvidia_driver"; nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1
  echo "==nvidia_smi"
  nvidia-smi --query-gpu=index,name,memory.total,compute_cap,power.limit,power.min_limit,power.max_limit,pci.bus_id \
    --format=csv,noheader,nounits 2>&1 || {
    echo "==nvidia_smi_nocc"
    nvidia-smi --query-gpu=index,name,memory.total,power.limit,power.min_limit,power.max_limit,pci.bus_id \
      --format=csv,noheader,nounits 2>&1; }
fi
if command -v amd-smi >/dev/null 2>&1; then
  echo "==amd_smi"; amd-smi static --asic --vram --bus --limit --json 2>/dev/null; echo
fi
if command -v rocm-smi >/dev/null 2>&1; then
  echo "==rocm_smi"; rocm-smi --showproductname --showmeminfo vram --showbus --showmaxpower --json 2>/dev/null; echo
fi
if command -v vulkaninfo >/dev/null 2>&1; then
  echo "==vulkaninfo"; vulkaninfo --summary 2>/dev/null; echo
fi
if command -v rocminfo >/dev/null 2>&1; then
  echo "==rocminfo"; rocminfo 2>/dev/null; echo
fi
echo "==sysfs_cards"
for d in "$sys"/class/drm/card[0-9]*/device; do
  [ -f "$d/vendor" ] || continue
  card=${d%/device}
  case "${card##*/}" in *-*) continue ;; esac  # card0-DP-1 and the like are connectors
  render=-
  for r in "$d"/drm/renderD*; do [ -e "$r" ] && render=${r##*/}; done
  echo "$(cat "$d/vendor") $(cat "$d/device" 2>/dev/null) $(cat "$d/mem_info_vram_total" 2>/dev/null || echo -) $(basename "$(readlink -f "$d")") $render"
done
echo "==sysfs_kfd"
for n in "$sys"/class/kfd/kfd/topology/nodes/*/properties; do
  [ -f "$n" ] && awk '$1 == "gfx_target_version" { print $2 }' "$n"
done
echo "==end"
