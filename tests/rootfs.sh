#!/bin/sh
# Suite `rootfs`: the FROM-scratch image's file tree (make rootfs -> build/rootfs)
# runs from that folder alone. chroot (as root) or `unshare -r chroot` (as a
# user, where user namespaces are allowed) starts /llmgw -c /etc/llmgw/llmgw.ini
# inside it; curl from outside talks to it over 127.0.0.1 through the mock
# provider. Also checks the tree holds exactly the three files, that the
# binary has no ELF interpreter (static) and stays under 512 KB, that the CA bundle parses (ca_file
# check with -t inside the chroot) and that the Docker variant of the config
# (ROOTFS_LISTEN=0.0.0.0:8080, what the Dockerfile builds) is valid.
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
pass=0
fail=0
ok() { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1${2:+: $2}"; fail=$((fail + 1)); }
finish() {
	echo "rootfs: $pass passed, $fail failed"
	[ "$fail" -eq 0 ]
	exit
}
log=build/test-rootfs-gw.log

# How to enter a chroot: as root directly, else in a user namespace.
if [ "$(id -u)" -eq 0 ] && chroot / true 2>/dev/null; then
	CHROOT="chroot"
elif unshare -r chroot / true 2>/dev/null; then
	CHROOT="unshare -r chroot"
else
	echo "rootfs: SKIPPED: cannot chroot (not root and no user namespaces for unshare -r)"
	echo "0 passed, 0 failed"
	exit 0
fi

# build/rootfs as `make rootfs` makes it (127.0.0.1:8080). If 8080 is taken
# on this machine, the same recipe builds build/rootfs-port with a free port.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_free() {
	python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}
root=build/rootfs
port=8080
if ! port_free 8080; then
	port=$(free_port)
	root=build/rootfs-port
	echo "note: 127.0.0.1:8080 is in use here; testing $root, the same tree listening on port $port"
fi
if make -s rootfs ROOTFS=$root ROOTFS_LISTEN=127.0.0.1:$port >build/test-rootfs-make.out 2>&1; then
	ok "make rootfs"
else
	cat build/test-rootfs-make.out
	bad "make rootfs"
	finish
fi

files=$(cd $root && find . -type f -o -type l | sort | tr '\n' ' ')
if [ "$files" = "./etc/llmgw/llmgw.ini ./etc/ssl/certs/ca-certificates.crt ./llmgw " ]; then
	ok "tree holds only /llmgw, the CA bundle and the config"
else
	bad "tree content" "$files"
fi

# static: no PT_INTERP program header (readelf comes with binutils)
# the size target of the static x86_64 musl binary with TLS (SIZE_BUDGET bytes)
size=$(wc -c <$root/llmgw)
budget=${SIZE_BUDGET:-524288}
if [ "$size" -lt "$budget" ]; then
	ok "/llmgw is $size bytes, under the $budget-byte budget ($((budget - size)) to spare)"
else
	bad "/llmgw is $size bytes" "over the $budget-byte budget (512 KB)"
fi

if ! command -v readelf >/dev/null 2>&1; then
	echo "note: readelf missing, static check left to the chroot run"
elif readelf -lW $root/llmgw | grep -q INTERP; then
	bad "static binary" "$root/llmgw has an ELF interpreter"
elif readelf -SW $root/llmgw | grep -q '\.symtab'; then
	bad "stripped binary" "$root/llmgw still has a symbol table"
else
	ok "static (no ELF interpreter) and stripped"
fi

if out=$($CHROOT $root /llmgw -t -c /etc/llmgw/llmgw.ini 2>&1); then
	ok "chroot: llmgw -t accepts /etc/llmgw/llmgw.ini"
else
	bad "chroot: llmgw -t" "$out"
fi

# The gateway, from the folder alone.
$CHROOT $root /llmgw -c /etc/llmgw/llmgw.ini >"$log" 2>&1 &
gw=$!
trap 'kill -KILL $gw 2>/dev/null' EXIT
trap 'kill -KILL $gw 2>/dev/null; exit 1' HUP INT PIPE TERM
up=0
i=0
while [ $i -lt 100 ]; do
	if curl -s -m 1 -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null; then
		up=1
		break
	fi
	kill -0 $gw 2>/dev/null || break
	sleep 0.1
	i=$((i + 1))
done
if [ $up -eq 1 ]; then
	ok "chroot: gateway started and answers /health"
	marker="rootfs-$$-$(date +%s)"
	body="{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"$marker\"}]}"
	r=$(curl -s -m 5 -w '\n%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" \
		-H 'Authorization: Bearer sk-llmgw-demo' -d "$body")
	code=$(echo "$r" | tail -n 1)
	if [ "$code" = 200 ] && echo "$r" | grep -q "You said: $marker"; then
		ok "chroot: chat completion through the mock provider (200, content)"
	else
		bad "chroot: chat completion" "$r"
	fi
	body="{\"model\":\"gpt-4o-mini\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"$marker\"}]}"
	r=$(curl -s -N -m 5 "http://127.0.0.1:$port/v1/chat/completions" -H 'Authorization: Bearer sk-llmgw-demo' -d "$body")
	if echo "$r" | grep -q '^data: \[DONE\]' && echo "$r" | grep -q '"content"'; then
		ok "chroot: streamed completion (alias, SSE to [DONE])"
	else
		bad "chroot: streamed completion" "$r"
	fi
	r=$(curl -s -m 5 -w '\n%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" -d "$body")
	if [ "$(echo "$r" | tail -n 1)" = 401 ]; then ok "chroot: no key is a 401"; else bad "chroot: no key" "$r"; fi
	if grep -q "\"status\":200" "$log"; then ok "chroot: access log on stderr"; else bad "chroot: access log"; fi
else
	bad "chroot: gateway did not start" "$(cat "$log")"
fi
if kill -0 $gw 2>/dev/null; then
	kill -TERM $gw
	i=0
	while kill -0 $gw 2>/dev/null && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	if kill -0 $gw 2>/dev/null; then
		kill -KILL $gw
		bad "chroot: SIGTERM stop" "still running after 10 s"
	fi
fi
wait $gw
rc=$?
trap - EXIT HUP INT PIPE TERM
if [ $up -eq 1 ]; then
	if [ $rc -eq 0 ]; then ok "chroot: SIGTERM, exit status 0"; else bad "chroot: exit status $rc" "$(tail -n 5 "$log")"; fi
fi

# The Docker image's variant (what the Dockerfile's build stage makes), plus
# a config that makes the binary parse the CA bundle at the path it carries.
dock=build/rootfs-docker
if make -s rootfs ROOTFS=$dock ROOTFS_LISTEN=0.0.0.0:8080 >build/test-rootfs-make.out 2>&1 &&
	grep -q '^listen = 0.0.0.0:8080$' $dock/etc/llmgw/llmgw.ini &&
	out=$($CHROOT $dock /llmgw -t -c /etc/llmgw/llmgw.ini 2>&1); then
	ok "Docker variant (listen = 0.0.0.0:8080) is valid"
else
	bad "Docker variant" "$(cat build/test-rootfs-make.out) ${out:-}"
fi
cat >$dock/ca-check.ini <<'EOF'
[gateway]
listen = 127.0.0.1:1
auth = none
ca_file = /etc/ssl/certs/ca-certificates.crt
[provider.p]
type = openai
base_url = https://api.example.invalid/v1
[model.x]
target = p x
EOF
if out=$($CHROOT $dock /llmgw -t -c /ca-check.ini 2>&1); then
	ok "chroot: the CA bundle parses (ca_file = /etc/ssl/certs/ca-certificates.crt)"
else
	bad "chroot: CA bundle" "$out"
fi
rm -rf $dock
finish
