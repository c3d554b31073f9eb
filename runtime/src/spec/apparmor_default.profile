# crust's AppArmor profile for containers that ask for RuntimeDefault (kubelet's
# default). A container keeps what its capabilities and seccomp profile allow; this
# adds what those cannot say by path: no writes to the kernel's tunables, no raw
# memory or firmware, no mounts, no ptrace of processes outside the profile.
#include <tunables/global>

profile crust-default flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer=crust-default,
  ptrace (trace,read,tracedby,readby) peer=crust-default,

  deny mount,
  deny pivot_root,

  # runc writes the pod's sysctls before the profile applies; nothing after may.
  deny @{PROC}/sys/** wklx,
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,
  deny @{PROC}/kmem rwklx,
  deny @{PROC}/mem rwklx,
  deny @{PROC}/kallsyms rwklx,

  deny /sys/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
}
