#!/usr/bin/env bash
# container.sh: throwaway Debian trixie containers booted by a real systemd (under
# systemd-nspawn) for ss-bridge's tests. Needs root, systemd-nspawn (Debian package
# systemd-container), debootstrap (only to build the rootfs), util-linux (unshare, nsenter,
# flock), overlayfs and a cgroup2 hierarchy (pure or hybrid).
#
#   container.sh check          print what is missing and exit 1, or exit 0
#   container.sh rootfs         build the cached rootfs tarball if missing, and its
#                               extracted copy used as the overlay's lower layer
#   container.sh boot DIR       boot a fresh container with state in DIR (created if
#                               missing; must not hold a running container) in the
#                               background; return once it is running (or degraded) and
#                               print the host pid of its init on stdout
#   container.sh run DIR        the same container in the foreground: the calling process
#                               becomes systemd-nspawn and returns when the container
#                               has shut down; use `wait DIR` to wait until it has booted
#   container.sh wait DIR       wait until the container of DIR is running or degraded and
#                               print the host pid of its init
#   container.sh exec PID|DIR CMD [ARG...]
#                               run CMD as root inside the container (its mount, pid, uts
#                               and ipc namespaces; the network is the host's anyway),
#                               with a clean environment and no more capabilities than
#                               the container's init (no CAP_NET_ADMIN); stdin, stdout,
#                               stderr and the exit status are CMD's
#   container.sh stop DIR       shut the container down (SIGKILL after a timeout) and remove
#                               everything boot created except DIR/share and DIR/console.log
#
# Layout of DIR: share/ is the host directory bind-mounted read-write at /opt/ss-bridge in
# the container; console.log is the container's console; init.pid and nspawn.pid the host
# pids of the container's init and of systemd-nspawn; upper/, work/ and root/ the overlay.
#
# Environment: SS_BRIDGE_ROOTFS_CACHE (default /var/cache/ss-bridge/trixie-rootfs.tar),
# SS_BRIDGE_DEBIAN_MIRROR (default: the first non-security URI in /etc/apt sources),
# SS_BRIDGE_BOOT_TIMEOUT (seconds, default 120), SS_BRIDGE_STOP_TIMEOUT (default 20).
#
# The container's root is an overlayfs mounted in a private mount namespace over the
# extracted cache, so every boot starts from the pristine image and no mount is ever
# visible on the host. Never boot systemd on the host's own root filesystem: its tmpfiles
# would wipe the host's /tmp. The container shares the host's network (a ListenStream=
# 127.0.0.1:PORT inside is reachable from the host); nspawn drops CAP_NET_ADMIN and
# networkd, resolved and timesyncd are masked inside.
#
# Several containers may run at once; the rootfs cache is built and extracted under an
# flock, in temporary directories renamed into place, so an interrupted build leaves none.
# A DIR booted with `boot` outlives its caller: always `stop` it. The host's PID 1 reaps
# systemd-nspawn then; `run` lets the caller be its parent and reap it (the Go package
# does that).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE=${SS_BRIDGE_ROOTFS_CACHE:-/var/cache/ss-bridge/trixie-rootfs.tar}
LOWER=${CACHE%.tar}.lower
SUITE=trixie
GUEST_DIR=/opt/ss-bridge
BOOT_TIMEOUT=${SS_BRIDGE_BOOT_TIMEOUT:-120}
STOP_TIMEOUT=${SS_BRIDGE_STOP_TIMEOUT:-20}
GUEST_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() {
	echo "container.sh: $*" >&2
	exit 1
}

# ---------------------------------------------------------------------------- checks

missing() {
	local m=()
	[ "$(id -u)" = 0 ] || m+=("not root")
	command -v systemd-nspawn >/dev/null || m+=("systemd-nspawn (Debian package systemd-container)")
	local c
	for c in unshare nsenter flock tar; do
		command -v "$c" >/dev/null || m+=("$c")
	done
	if [ ! -s "$CACHE" ] && ! command -v debootstrap >/dev/null; then
		m+=("debootstrap (needed once to build $CACHE)")
	fi
	if ! grep -qw overlay /proc/filesystems && ! modprobe overlay 2>/dev/null; then
		m+=("overlayfs")
	fi
	if [ -z "$(cgroup_roots)" ]; then
		m+=("a writable cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
	fi
	if [ "$(id -u)" = 0 ] && ! unshare --mount --propagation private true 2>/dev/null; then
		m+=("mount namespaces (unshare --mount failed)")
	fi
	printf '%s\n' "${m[@]}"
}

cmd_check() {
	local m
	m=$(missing)
	if [ -n "$m" ]; then
		echo "missing prerequisites for a systemd container:" >&2
		printf '%s\n' "$m" | sed 's/^/  /' >&2
		exit 1
	fi
}

# cgroup_roots prints the cgroup hierarchies the launching process must move into a cgroup
# of its own: the cgroup2 one (pure or hybrid layout), plus the name=systemd one of a hybrid
# layout. Nothing when there is no cgroup2, which systemd 257 inside requires.
cgroup_roots() {
	local fs
	fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null || true)
	if [ "$fs" = cgroup2fs ]; then
		[ -w /sys/fs/cgroup/cgroup.procs ] && echo /sys/fs/cgroup
		return 0
	fi
	if [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null || true)" = cgroup2fs ] &&
		[ -w /sys/fs/cgroup/unified/cgroup.procs ]; then
		echo /sys/fs/cgroup/unified
		if [ -d /sys/fs/cgroup/systemd ] && [ -w /sys/fs/cgroup/systemd/cgroup.procs ]; then
			echo /sys/fs/cgroup/systemd
		fi
	fi
}

# ---------------------------------------------------------------------------- rootfs

mirror() {
	if [ -n "${SS_BRIDGE_DEBIAN_MIRROR:-}" ]; then
		echo "$SS_BRIDGE_DEBIAN_MIRROR"
		return
	fi
	local m=""
	if [ -r /etc/apt/sources.list.d/debian.sources ]; then
		m=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
	fi
	if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
		m=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/ && $i !~ /security/) { print $i; exit } }' /etc/apt/sources.list)
	fi
	echo "${m:-http://deb.debian.org/debian}"
}

# build_tarball builds the rootfs in a temporary directory next to the cache and renames
# the finished tarball into place, so an interrupted build never leaves a partial cache.
build_tarball() {
	command -v debootstrap >/dev/null || die "debootstrap is needed to build $CACHE"
	local dir tmp
	dir=$(dirname "$CACHE")
	tmp=$(mktemp -d "$dir/.build.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf '$tmp'" EXIT
	echo "container.sh: building $SUITE rootfs from $(mirror) into $CACHE" >&2
	# In a private mount namespace: debootstrap's /proc and /sys mounts in the target can
	# never outlive it on the host, even when it is interrupted.
	if ! unshare --mount --propagation private -- \
		debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
		"$SUITE" "$tmp/root" "$(mirror)" >"$tmp/debootstrap.log" 2>&1; then
		tail -n 30 "$tmp/debootstrap.log" >&2
		[ -f "$tmp/root/debootstrap/debootstrap.log" ] && tail -n 30 "$tmp/root/debootstrap/debootstrap.log" >&2
		die "debootstrap failed"
	fi
	local r=$tmp/root
	rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/var/log/*.log
	tar --numeric-owner --xattrs --xattrs-include='*' -C "$r" -cf "$tmp/rootfs.tar" .
	sync "$tmp/rootfs.tar"
	mv -f "$tmp/rootfs.tar" "$CACHE"
	sync "$dir"
	rm -rf "$tmp"
	trap - EXIT
}

tar_stamp() {
	stat -c '%s %Y %i' "$CACHE"
}

# extract_lower extracts the tarball into the overlay's lower directory when that is
# missing or was extracted from another tarball. The stamp file is written last and
# removed first, so an interrupted extraction is redone.
extract_lower() {
	if [ -d "$LOWER" ] && [ -f "$LOWER.stamp" ] && [ "$(cat "$LOWER.stamp")" = "$(tar_stamp)" ]; then
		return 0
	fi
	local dir tmp
	dir=$(dirname "$CACHE")
	tmp=$(mktemp -d "$dir/.lower.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf '$tmp'" EXIT
	tar --numeric-owner --xattrs --xattrs-include='*' -C "$tmp" -xpf "$CACHE"
	rm -f "$LOWER.stamp"
	if [ -e "$LOWER" ]; then
		mv "$LOWER" "$tmp.old"
	fi
	mv "$tmp" "$LOWER"
	trap - EXIT
	rm -rf "$tmp.old"
	tar_stamp >"$LOWER.stamp.tmp"
	mv -f "$LOWER.stamp.tmp" "$LOWER.stamp"
}

cmd_rootfs() {
	[ "$(id -u)" = 0 ] || die "must run as root"
	mkdir -p "$(dirname "$CACHE")"
	(
		flock 9
		# Leftovers of a build or extraction that was killed (only a lock holder makes them).
		rm -rf "$(dirname "$CACHE")"/.build.* "$(dirname "$CACHE")"/.lower.*
		[ -s "$CACHE" ] || build_tarball
		extract_lower
	) 9>"$CACHE.lock"
}

# ---------------------------------------------------------------------------- boot

state_dir() {
	[ -n "${1:-}" ] || die "missing DIR"
	mkdir -p "$1"
	local d
	d=$(readlink -f "$1")
	# It ends up in overlayfs options and in nspawn's --bind=SRC:DST.
	[[ $d =~ ^[A-Za-z0-9._/@+-]+$ ]] || die "DIR $d: only letters, digits and ._/@+- please"
	echo "$d"
}

running() { # DIR: holds a running container
	local npid nstart
	[ -s "$1/nspawn.pid" ] || return 1
	read -r npid nstart <"$1/nspawn.pid"
	alive "$npid" "$nstart"
}

# machine_name derives a valid, short hostname from the state directory.
machine_name() {
	echo "ssb-$(printf '%s' "$1" | md5sum | cut -c1-12)"
}

alive() { # pid [starttime]: running and not a zombie (and the same process)
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	local -a f
	read -r -a f <<<"$stat"
	[ "${f[0]}" != Z ] && [ "${f[0]}" != X ] || return 1
	[ -z "${2:-}" ] || [ "${f[19]}" = "$2" ]
}

starttime() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	local -a f
	read -r -a f <<<"$stat"
	echo "${f[19]}"
}

cmd_run() {
	local dir name
	dir=$(state_dir "${1:-}")
	name=$(machine_name "$dir")
	case $dir/ in /run/*) die "DIR must not be under /run" ;; esac
	case $LOWER/ in /run/*) die "the rootfs cache must not be under /run" ;; esac
	[ -z "$(missing)" ] || cmd_check
	running "$dir" && die "$dir already holds a running container"
	[[ $LOWER =~ ^[A-Za-z0-9._/@+-]+$ ]] || die "cache path $LOWER: only letters, digits and ._/@+- please"
	cmd_rootfs
	rm -rf "$dir/upper" "$dir/work" "$dir/root"
	rm -f "$dir/init.pid" "$dir/nspawn.pid" "$dir/cgroups"
	mkdir -p "$dir/upper" "$dir/work" "$dir/root" "$dir/share"
	# The host's PID 1 is not systemd: nspawn needs to be in a cgroup of its own, in the
	# cgroup2 hierarchy and (hybrid layout) in the name=systemd one.
	local root cg
	for root in $(cgroup_roots); do
		cg=$root/ss-bridge-$name
		mkdir -p "$cg"
		echo "$cg" >>"$dir/cgroups"
		echo $$ >"$cg/cgroup.procs"
	done
	echo "$$ $(starttime $$)" >"$dir/nspawn.pid"
	export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
	exec unshare --mount --propagation private -- bash "$SELF" _launch "$dir" "$name"
}

# customize configures a fresh container's root (the overlay, so that the cached image
# stays plain debootstrap output and changes here need no rebuild of the cache).
customize() {
	local r=$1 u
	# A valid machine id of its own: no first-boot logic.
	od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$r/etc/machine-id"
	echo >>"$r/etc/machine-id"
	echo ss-bridge-test >"$r/etc/hostname"
	mkdir -p "$r$GUEST_DIR" "$r/etc/systemd/journald.conf.d"
	printf '[Journal]\nStorage=volatile\n' >"$r/etc/systemd/journald.conf.d/ss-bridge-test.conf"
	# Timers that could start work in the middle of a test, and what would configure the
	# network, which is the host's.
	for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
		fstrim.timer man-db.timer systemd-tmpfiles-clean.timer \
		systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service \
		systemd-network-generator.service systemd-resolved.service systemd-timesyncd.service; do
		ln -sfn /dev/null "$r/etc/systemd/system/$u"
	done
}

cmd__launch() { # in the private mount namespace; becomes systemd-nspawn
	local dir=$1 name=$2
	# nspawn keeps state under /run/systemd/nspawn, which outlives the container when the
	# host's /run is no tmpfs (nspawn refuses to clean up a disk file system): a tmpfs of
	# this namespace takes it. nspawn needs nothing from the host's /run.
	mount -t tmpfs -o mode=0755,size=16m ss-bridge-run /run
	mount -t overlay "ss-bridge-$name" \
		-o "lowerdir=$LOWER,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
	customize "$dir/root"
	exec systemd-nspawn --quiet --boot --register=no --keep-unit \
		--directory="$dir/root" --machine="$name" \
		--bind="$dir/share:$GUEST_DIR" \
		--link-journal=no --resolv-conf=off --timezone=off --console=read-only
}

# init_pid prints the host pid of the container's init: the child of nspawn that is
# pid 1 in its own pid namespace.
init_pid() {
	local npid=$1 c ns
	# shellcheck disable=SC2013 # pids separated by spaces
	for c in $(cat /proc/"$npid"/task/*/children 2>/dev/null); do
		ns=$(awk '/^NSpid:/ {print $NF}' "/proc/$c/status" 2>/dev/null || true)
		if [ "$ns" = 1 ]; then
			echo "$c"
			return 0
		fi
	done
	return 1
}

cmd_wait() { # DIR [PID of the `run` that will become nspawn]
	local dir launcher=${2:-}
	dir=$(state_dir "${1:-}")
	local deadline=$((SECONDS + BOOT_TIMEOUT)) npid="" nstart="" ipid="" state=""
	while [ $SECONDS -lt $deadline ]; do
		if [ -n "$launcher" ] && [ -z "$npid" ] && ! alive "$launcher"; then
			tail -n 40 "$dir/console.log" >&2 2>/dev/null || true
			die "container.sh run exited before starting systemd-nspawn (see $dir/console.log)"
		fi
		if [ -z "$npid" ] && [ -s "$dir/nspawn.pid" ]; then
			read -r npid nstart <"$dir/nspawn.pid"
		fi
		if [ -n "$npid" ]; then
			alive "$npid" "$nstart" || { tail -n 40 "$dir/console.log" >&2 2>/dev/null || true; die "systemd-nspawn exited during boot (see $dir/console.log)"; }
			# nspawn is an exec'd bash until it has set up the container.
			if [ -z "$ipid" ] && [ "$(cat /proc/"$npid"/comm 2>/dev/null)" = systemd-nspawn ]; then
				ipid=$(init_pid "$npid" || true)
			fi
			if [ -n "$ipid" ]; then
				state=$(enter "$ipid" timeout 30 systemctl is-system-running --wait 2>/dev/null || true)
				case $state in
				running | degraded)
					echo "$ipid" >"$dir/init.pid"
					echo "$ipid"
					return 0
					;;
				maintenance | stopping)
					die "container is $state"
					;;
				esac
			fi
		fi
		sleep 0.05
	done
	die "container did not boot within ${BOOT_TIMEOUT}s (state: ${state:-unknown}; see $dir/console.log)"
}

cmd_boot() {
	local dir
	dir=$(state_dir "${1:-}")
	running "$dir" && die "$dir already holds a running container"
	rm -f "$dir/nspawn.pid" "$dir/init.pid"
	# setsid: not in the caller's process group, so ^C in a terminal does not reach it.
	setsid --fork --wait bash "$SELF" run "$dir" </dev/null >"$dir/console.log" 2>&1 &
	cmd_wait "$dir" $!
}

# ---------------------------------------------------------------------------- exec

# Capability names by number, for setpriv.
CAPS=(chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap
	linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner
	sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice
	sys_resource sys_time sys_tty_config mknod lease audit_write audit_control setfcap
	mac_override mac_admin syslog wake_alarm block_suspend audit_read perfmon bpf
	checkpoint_restore)

# bounding_set prints the capability bounding set of a process for setpriv.
bounding_set() {
	local hex bnd i out=-all
	hex=$(awk '/^CapBnd:/ {print $2}' "/proc/$1/status") && [ -n "$hex" ] || return 1
	bnd=$((16#$hex))
	for i in "${!CAPS[@]}"; do
		if (((bnd >> i) & 1)); then
			out+=,+${CAPS[i]}
		fi
	done
	echo "$out"
}

# enter runs a command in the container of init pid $1. It keeps no more capabilities than
# the container's init has: the network namespace and the cgroup are the host's, and
# without CAP_NET_ADMIN (which nspawn drops) nothing run here can reconfigure the host's
# network.
enter() {
	local pid=$1 caps
	shift
	# Only ever the init of a container: never a host process that got the pid of a
	# container gone meanwhile.
	local nspid theirs ours
	nspid=$(awk '/^NSpid:/ {print $NF}' "/proc/$pid/status" 2>/dev/null || true)
	theirs=$(readlink "/proc/$pid/ns/pid" 2>/dev/null || true)
	ours=$(readlink /proc/self/ns/pid)
	if [ "$nspid" != 1 ] || [ -z "$theirs" ] || [ "$theirs" = "$ours" ]; then
		die "process $pid is no container's init"
	fi
	caps=$(bounding_set "$pid") || die "no process $pid"
	nsenter --target "$pid" --mount --uts --ipc --pid -- \
		setpriv --bounding-set "$caps" -- \
		env -i PATH="$GUEST_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb \
		SYSTEMD_PAGER= SYSTEMD_COLORS=0 SYSTEMD_LOG_COLOR=0 "$@"
}

cmd_exec() {
	local target=${1:-} pid
	[ -n "$target" ] || die "usage: exec PID|DIR CMD [ARG...]"
	shift
	[ $# -gt 0 ] || die "usage: exec PID|DIR CMD [ARG...]"
	if [[ $target =~ ^[0-9]+$ ]]; then
		pid=$target
	else
		pid=$(cat "$target/init.pid" 2>/dev/null) || die "no running container in $target"
	fi
	enter "$pid" "$@"
}

# ---------------------------------------------------------------------------- stop

cmd_stop() {
	local dir
	dir=$(state_dir "${1:-}")
	local npid="" nstart=""
	[ -s "$dir/nspawn.pid" ] && read -r npid nstart <"$dir/nspawn.pid"
	if [ -n "$npid" ] && alive "$npid" "$nstart"; then
		# nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd: a clean halt.
		kill -TERM "$npid" 2>/dev/null || true
		local deadline=$((SECONDS + STOP_TIMEOUT))
		while alive "$npid" "$nstart" && [ $SECONDS -lt $deadline ]; do
			sleep 0.02
		done
		if alive "$npid" "$nstart"; then
			echo "container.sh: container did not stop within ${STOP_TIMEOUT}s, killing it" >&2
			local ipid
			ipid=$(init_pid "$npid" || true)
			# Killing the init of a pid namespace kills everything in it.
			if [ -n "$ipid" ]; then
				kill -KILL "$ipid" 2>/dev/null || true
			fi
			kill -KILL "$npid" 2>/dev/null || true
			deadline=$((SECONDS + 10))
			while alive "$npid" "$nstart" && [ $SECONDS -lt $deadline ]; do
				sleep 0.02
			done
			alive "$npid" "$nstart" && die "systemd-nspawn $npid does not die"
		fi
	fi
	# The overlay lived in nspawn's private mount namespace and is gone with it; refuse to
	# delete anything that is still mounted all the same.
	if grep -qF " $dir/" /proc/self/mountinfo; then
		die "still mounted under $dir: $(grep -F " $dir/" /proc/self/mountinfo | awk '{print $5}' | tr '\n' ' ')"
	fi
	if [ -f "$dir/cgroups" ]; then
		local cg sub i
		while read -r cg; do
			[ -d "$cg" ] || continue
			for i in $(seq 100); do
				# deepest first
				for sub in $(find "$cg" -mindepth 1 -type d 2>/dev/null | sort -r); do
					rmdir "$sub" 2>/dev/null || true
				done
				rmdir "$cg" 2>/dev/null && break
				sleep 0.02
			done
			[ -d "$cg" ] && die "cannot remove cgroup $cg"
		done <"$dir/cgroups"
	fi
	rm -rf "$dir/upper" "$dir/work" "$dir/root"
	rm -f "$dir/init.pid" "$dir/nspawn.pid" "$dir/cgroups"
}

# ---------------------------------------------------------------------------- main

usage() {
	sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
check) cmd_check ;;
rootfs) cmd_rootfs ;;
boot) cmd_boot "$@" ;;
run) cmd_run "$@" ;;
wait) cmd_wait "$@" ;;
exec) cmd_exec "$@" ;;
stop) cmd_stop "$@" ;;
_launch) cmd__launch "$@" ;;
*) usage ;;
esac
