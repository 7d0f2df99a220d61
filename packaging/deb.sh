#!/usr/bin/env bash
# deb.sh OUTDIR: build the Debian package of ss-bridge from this checkout into
# OUTDIR/ss-bridge_VERSION_ARCH.deb and print its path. Needs go and dpkg-deb
# (no root: --root-owner-group). GOARCH=arm64 (etc.) cross-builds.
#
# VERSION is cli.release ("0.1.0") when HEAD is tagged v0.1.0, else
# 0.1.0+gitYYYYMMDDhhmmss.COMMIT (the commit's date, UTC), with ".dirty" for
# uncommitted changes, so that versions of successive commits sort in order.
# The binary gets the same version with -ldflags, so `ss-bridge --version`
# names the commit it was built from.
#
# start_server: Perl's libserver-starter-perl ships /usr/bin/start_server as a
# plain file, not an alternative, so an update-alternatives link there would
# either be refused or overwritten by that package (and a dpkg-divert would
# take its file away). This package installs the link under its own
# directory, /usr/lib/ss-bridge/bin/start_server (as ccache does for
# compilers), with a start_server(1) page next to it that man finds through
# PATH: PATH=/usr/lib/ss-bridge/bin:$PATH makes start_server and
# `man start_server` ss-bridge's, and nothing else changes.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: bash packaging/deb.sh OUTDIR" >&2; exit 1; }
out=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
mkdir -p "$out"
out=$(cd "$out" && pwd)

release=$(sed -n 's/^const release = "\(.*\)"$/\1/p' cli/version.go)
[ -n "$release" ] || { echo "deb.sh: no release in cli/version.go" >&2; exit 1; }
version=$release
if git rev-parse --git-dir >/dev/null 2>&1; then
	if [ "$(git tag --points-at HEAD | grep -Fx "v$release" || true)" = "" ]; then
		version="$release+git$(TZ=UTC0 git log -1 --date=format-local:%Y%m%d%H%M%S --format=%cd).$(git rev-parse --short=12 HEAD)"
	fi
	git diff --quiet HEAD -- 2>/dev/null || version+=.dirty
fi

goarch=${GOARCH:-$(go env GOARCH)}
case $goarch in
386) arch=i386 ;;
arm) arch=armhf ;;
*) arch=$goarch ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/ss-bridge/bin" \
	"$root/usr/share/man/man1" "$root/usr/lib/ss-bridge/share/man/man1" \
	"$root/usr/share/bash-completion/completions" "$root/usr/lib/systemd/system" \
	"$root/usr/share/doc/ss-bridge/examples" "$root/etc/ss-bridge"

# Static (no libc: 1.4 MB less resident memory, no dependencies), without
# paths of this machine, with the version the package has.
echo "deb.sh: building ss-bridge $version for $arch" >&2
CGO_ENABLED=0 GOARCH=$goarch go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X github.com/ss-bridge/ss-bridge/cli.version=$version" \
	-o "$root/usr/bin/ss-bridge" ./cmd/ss-bridge
ln -s ../../../bin/ss-bridge "$root/usr/lib/ss-bridge/bin/start_server"

gzip -9n <docs/ss-bridge.1 >"$root/usr/share/man/man1/ss-bridge.1.gz"
ln -s ../../../../../share/man/man1/ss-bridge.1.gz "$root/usr/lib/ss-bridge/share/man/man1/start_server.1.gz"
install -m 0644 packaging/ss-bridge.bash-completion "$root/usr/share/bash-completion/completions/ss-bridge"
# The example unit, with the package's path and its man page (which the
# example cannot name: systemd-analyze verify fails where it is missing).
sed -e 's|/usr/local/bin/ss-bridge|/usr/bin/ss-bridge|g' \
	-e 's|^Description=.*|&\nDocumentation=man:ss-bridge(1)|' contrib/systemd/ss-bridge@.service \
	>"$root/usr/lib/systemd/system/ss-bridge@.service"
install -m 0644 packaging/debian/example.env "$root/usr/share/doc/ss-bridge/examples/example.env"
install -m 0644 README.md "$root/usr/share/doc/ss-bridge/README.md"
gzip -9n <CHANGELOG.md >"$root/usr/share/doc/ss-bridge/changelog.gz"
install -m 0644 packaging/debian/copyright "$root/usr/share/doc/ss-bridge/copyright"
for script in postinst prerm postrm; do
	install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"
done

maintainer=${DEB_MAINTAINER:-"ss-bridge developers <ss-bridge@users.noreply.github.com>"}
cat >"$root/DEBIAN/control" <<CONTROL
Package: ss-bridge
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Section: admin
Priority: optional
Suggests: systemd
Description: superdaemon for hot-deploying servers, a drop-in start_server
 ss-bridge holds a server's listening sockets and runs the server with them;
 on SIGHUP it starts a new generation and only then retires the old one, so
 clients never see a refused connection. It is compatible with Perl's
 Server::Starter 0.35 start_server (options, files, signals, log lines) and
 speaks systemd's protocols: socket activation, sd_notify, reload, the fd
 store. The template unit ss-bridge@.service runs one server per
 /etc/ss-bridge/NAME.env.
CONTROL

deb="$out/ss-bridge_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
