#!/usr/bin/env bash
# Run the docker-compose deployment end to end on this machine, without an image registry:
#
#   1. install docker.io, docker-compose and debootstrap if missing (scripts/install_docker_tools.sh)
#   2. build a Debian bookworm base image with python3 by debootstrap and `docker import`
#   3. download the dependency wheels on the host (PyPI or its mirrors, Python 3.11)
#   4. start a private dockerd: its own socket and exec root in a temporary folder, and its own
#      data root in the cache, so that a rerun reuses the image layers
#   5. build the project image with `docker build --network none` from those wheels
#   6. `docker-compose run reporter` with configs/compose-smoke.yaml, a reduced demo:
#      attacker and server pass their health checks, the client trains and exits, and the
#      reporter has the attacker attack the recorded traffic and writes report.json
#   7. check report.json: the expected keys, and test accuracy above chance
#   8. always, also on failure: `docker-compose down --volumes`, remove unused images, stop
#      dockerd by its pid, and delete the temporary folder
#
# The run's files (report.json, report.md, the reconstruction grid, metrics and logs) are
# copied to runs/docker-e2e/. Needs root. Environment:
#   CEMSPLIT_DOCKER_CACHE   cache of the base image tarball, Debian packages, wheels and the
#                           private dockerd's data root (default /var/cache/cemsplit-docker,
#                           about 4 GB; delete it to reclaim the space)
#   CEMSPLIT_DEBIAN_MIRROR  Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   CEMSPLIT_E2E_PYTHON     Python 3.11 that downloads the wheels (default .venv/bin/python,
#                           else python3); bookworm's python3 is 3.11, so the wheels must match
#   CEMSPLIT_E2E_CONFIG     config file of the compose run, relative to the repository
#                           (default ./configs/compose-smoke.yaml; ./configs/demo.yaml runs
#                           the full demo)
#   CEMSPLIT_E2E_TIMEOUT    seconds allowed for the compose run (default 900)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)
started=$(date +%s)

cache=${CEMSPLIT_DOCKER_CACHE:-/var/cache/cemsplit-docker}
mirror=${CEMSPLIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
run_config=${CEMSPLIT_E2E_CONFIG:-./configs/compose-smoke.yaml}
run_timeout=${CEMSPLIT_E2E_TIMEOUT:-900}
project=cemsplit-e2e
image=cemsplit:e2e
build_stage_image=cemsplit-build:e2e
base_image=cemsplit-base:bookworm
data_root=$cache/docker-data
out=$repo/runs/docker-e2e

work=""
dockerd_pid=""
owns_lock=0
logs_saved=0
linked_wheels=()
created_run_dirs=()
timings=()
step="starting"
step_started=$started

say() { echo "docker_e2e: $*"; }

# Seconds since the given epoch time.
since() { echo $(( $(date +%s) - $1 )); }

begin() {
  step=$1
  step_started=$(date +%s)
  say "$step"
}

finish() {
  local seconds=$(( $(date +%s) - step_started ))
  timings+=("$1 ${seconds}s")
}

# Print the end of a log file, indented, under a heading.
show_tail() {
  local path=$1 lines=${2:-40}
  [ -s "$path" ] || return 0
  echo "----- last $lines lines of $(basename "$path") -----"
  tail -n "$lines" "$path" | sed 's/^/  /'
}

fail() {
  echo "docker_e2e: FAILED while $step: $*" >&2
  exit 1
}

# Unmount everything mounted below a folder, deepest first (debootstrap's /proc, a killed
# dockerd's overlay mounts), so that the folder can be deleted.
unmount_under() {
  local root=$1
  awk -v root="$root/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mount_point; do
    umount -l "$mount_point" 2>/dev/null || true
  done
}

compose() {
  docker-compose -p "$project" "$@"
}

# The daemon is private, so every container on it belongs to this script.
remove_all_containers() {
  local containers
  mapfile -t containers < <(docker ps -aq 2>/dev/null)
  [ "${#containers[@]}" -eq 0 ] || docker rm -f -v "${containers[@]}" >/dev/null 2>&1
}

# Take the cache for this run. The lock is a folder with the owner's pid in it, because a file
# descriptor lock would be inherited, and kept, by the daemons and commands this script starts.
take_lock() {
  local holder
  if ! mkdir "$cache/run.lock" 2>/dev/null; then
    holder=$(cat "$cache/run.lock/pid" 2>/dev/null)
    if [ -n "$holder" ] && tr '\0' ' ' <"/proc/$holder/cmdline" 2>/dev/null | grep -q "docker_e2e.sh"; then
      fail "another run of docker_e2e.sh (pid $holder) uses $cache; wait for it to finish"
    fi
    say "taking over $cache/run.lock from a run that ended without cleaning up (pid ${holder:-unknown})"
  fi
  echo "$$" >"$cache/run.lock/pid"
  owns_lock=1
}

# Stop what an earlier, killed run of this script left running: its docker-compose command,
# and its dockerd on the cached data root, then delete that run's temporary folder. Their
# pids are in the cache, and each process's command line must match what this script starts.
stop_stale_processes() {
  local stale command_line stale_work
  stale=$(cat "$cache/compose.pid" 2>/dev/null)
  if [ -n "$stale" ] && tr '\0' ' ' <"/proc/$stale/cmdline" 2>/dev/null | grep -q -- "docker-compose -p $project run"; then
    say "stopping docker-compose pid $stale, left running by an earlier run"
    kill -TERM "$stale" 2>/dev/null
  fi
  rm -f "$cache/compose.pid"

  stale=$(cat "$cache/dockerd.pid" 2>/dev/null) || return 0
  command_line=$(tr '\0' ' ' <"/proc/$stale/cmdline" 2>/dev/null)
  if [ -n "$stale" ] && [[ "$command_line" == *"--data-root $data_root "* ]]; then
    say "stopping dockerd pid $stale, left running by an earlier run on $data_root"
    dockerd_pid=$stale stop_dockerd
    stale_work=$(echo "$command_line" | sed -n 's|.*--exec-root \(/tmp/cemsplit-docker\.[A-Za-z0-9]*\)/exec .*|\1|p')
    if [ -n "$stale_work" ] && [ -d "$stale_work" ]; then
      unmount_under "$stale_work"
      rm -rf "$stale_work"
    fi
  fi
  rm -f "$cache/dockerd.pid"
}

stop_dockerd() {
  [ -n "$dockerd_pid" ] || return 0
  if kill -0 "$dockerd_pid" 2>/dev/null; then
    kill -TERM "$dockerd_pid"
    for _ in $(seq 1 60); do
      kill -0 "$dockerd_pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$dockerd_pid" 2>/dev/null; then
      say "dockerd (pid $dockerd_pid) did not stop within 30 s; killing it"
      kill -KILL "$dockerd_pid" 2>/dev/null
    fi
  fi
  wait "$dockerd_pid" 2>/dev/null

  # dockerd stops the containerd it started; after a SIGKILL that containerd may be left.
  local containerd_pid
  containerd_pid=$(cat "$work/exec/containerd/containerd.pid" 2>/dev/null)
  if [ -n "$containerd_pid" ] && kill -0 "$containerd_pid" 2>/dev/null; then
    kill -KILL "$containerd_pid" 2>/dev/null
  fi
  rm -f "$cache/dockerd.pid"
  dockerd_pid=""
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local phase_started

  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    say "removing the containers, network and volumes of $project"
    phase_started=$(date +%s)
    if [ "$status" -ne 0 ] && [ -n "$work" ]; then
      mkdir -p "$out/logs"
      compose logs --no-color >"$out/logs/compose.log" 2>&1
      logs_saved=1
    fi
    compose down --volumes --remove-orphans --timeout 20 >"$work/down.log" 2>&1 \
      || { say "docker-compose down failed; removing every container of the private daemon"; show_tail "$work/down.log" 20; }
    # The daemon is private, so every container left on it belongs to this run.
    remove_all_containers
    # Earlier builds' images lose their tags to the new ones; only tagged images stay cached.
    docker image prune -f >/dev/null 2>&1
    timings+=("compose-down $(since "$phase_started")s")
  fi
  if [ -n "$dockerd_pid" ]; then
    say "stopping dockerd (pid $dockerd_pid)"
    phase_started=$(date +%s)
    stop_dockerd
    timings+=("dockerd-stop $(since "$phase_started")s")
  fi

  for path in "${linked_wheels[@]}"; do
    rm -f "$path"
  done
  # dockerd and containerd create these state folders even with their own roots; remove them
  # only when this run created them and they are empty.
  for path in "${created_run_dirs[@]}"; do
    rmdir "$path/plugins" "$path/s" "$path" 2>/dev/null
  done
  if [ -n "$work" ] && [ -d "$work" ]; then
    if [ "$status" -ne 0 ] && ls "$work"/*.log >/dev/null 2>&1; then
      mkdir -p "$out/logs"
      cp "$work"/*.log "$out/logs/"
      logs_saved=1
    fi
    unmount_under "$work"
    rm -rf "$work"
  fi

  [ "$owns_lock" -eq 1 ] && rm -rf "$cache/run.lock"

  local total=$(( $(date +%s) - started ))
  say "times: ${timings[*]}; total ${total}s"
  if [ "$status" -eq 0 ]; then
    say "PASSED: the compose run wrote $out/report.json"
  else
    [ "$logs_saved" -eq 1 ] && say "logs of the failed run: $out/logs/"
    say "FAILED (exit status $status)"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'fail "interrupted by a signal"' INT TERM

if [ "$(id -u)" -ne 0 ]; then
  fail "it needs root (debootstrap and dockerd); run it as root"
fi

# 1. Tools ------------------------------------------------------------------------------------
begin "checking docker.io, docker-compose and debootstrap"
bash scripts/install_docker_tools.sh || fail "the tools could not be installed (see above)"
docker_cli=/usr/bin/docker
[ -x "$docker_cli" ] || docker_cli=$(command -v docker) || fail "the docker command is missing; install docker.io"
docker() { "$docker_cli" "$@"; }
finish tools

work=$(mktemp -d /tmp/cemsplit-docker.XXXXXX) || fail "cannot create a temporary folder in /tmp"
export DOCKER_HOST=unix://$work/docker.sock
mkdir -p "$cache" || fail "cannot create the cache folder $cache; set CEMSPLIT_DOCKER_CACHE"
# One run at a time per cache, because the cache contains the daemon's data root.
take_lock

# 2. Base image tarball (cached) -----------------------------------------------------------------
base_packages=python3,python3-venv
base_key=$(echo "bookworm minbase $base_packages" | sha256sum | cut -c1-12)
base_tar=$cache/base-bookworm-$base_key.tar
if [ -s "$base_tar" ]; then
  begin "reusing the base image tarball $base_tar"
else
  begin "building a Debian bookworm root file system with $base_packages (debootstrap from $mirror)"
  mkdir -p "$cache/debs"
  debootstrap --variant=minbase --include="$base_packages" --cache-dir="$cache/debs" \
    bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { show_tail "$work/debootstrap.log"; fail "debootstrap failed; check that $mirror is reachable or set CEMSPLIT_DEBIAN_MIRROR"; }
  # Package lists and caches are not needed in the image.
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin
  tar --numeric-owner -C "$work/rootfs" -cf "$base_tar.tmp" . || fail "cannot write $base_tar.tmp"
  mv "$base_tar.tmp" "$base_tar"
  unmount_under "$work/rootfs"
  rm -rf "$work/rootfs"
fi
finish base

# 3. Wheels (cached) -------------------------------------------------------------------------------
begin "collecting dependency wheels"
python=${CEMSPLIT_E2E_PYTHON:-}
if [ -z "$python" ]; then
  python=python3
  [ -x .venv/bin/python ] && python=.venv/bin/python
fi
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || fail "$python does not run; set CEMSPLIT_E2E_PYTHON to a Python 3.11"
[ "$version" = "3.11" ] \
  || fail "$python is Python $version, but the image's python3 (Debian bookworm) is 3.11; set CEMSPLIT_E2E_PYTHON to a Python 3.11"
wheel_key=$(cat pyproject.toml constraints/cpu.txt | sha256sum | cut -c1-12)
wheels=$cache/wheels-py311-$wheel_key
if [ -d "$wheels" ]; then
  say "reusing $(ls "$wheels" | wc -l) wheels in $wheels"
else
  rm -rf "$wheels.tmp"
  # This machine's pip configuration can name index folders that do not exist; pip warns once
  # per package about them, so those lines are filtered out.
  "$python" -m pip download --disable-pip-version-check --quiet -d "$wheels.tmp" \
      -c constraints/cpu.txt . "setuptools>=68" wheel 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  [ "${PIPESTATUS[0]}" -eq 0 ] || fail "pip download failed (output above)"
  mv "$wheels.tmp" "$wheels"
  say "downloaded $(ls "$wheels" | wc -l) wheels to $wheels"
fi
# The wheels must lie inside the build context; hard links cost no space on the same disk.
# A wheel that is already a hard link to the cached one was left by a killed run: it is removed
# at the end like the new links.
for wheel in "$wheels"/*.whl; do
  target=docker/wheels/$(basename "$wheel")
  if [ -e "$target" ]; then
    [ "$target" -ef "$wheel" ] && linked_wheels+=("$repo/$target")
    continue
  fi
  ln "$wheel" "$target" 2>/dev/null || cp "$wheel" "$target" || fail "cannot copy $wheel into docker/wheels"
  linked_wheels+=("$repo/$target")
done
finish wheels

# 4. Private dockerd -------------------------------------------------------------------------------
begin "starting a private dockerd on $DOCKER_HOST"
for path in /run/docker /run/containerd; do
  [ -e "$path" ] || created_run_dirs+=("$path")
done
# No default bridge, no iptables rules, no IP forwarding and no masquerading: the host's
# network setup stays as it was, and the compose network (internal) has no route out.
stop_stale_processes
# Its own configuration file keeps /etc/docker/daemon.json out, and moves the identity key that
# dockerd 20.10 writes to /etc/docker/key.json into the temporary folder.
echo "{\"deprecated-key-path\": \"$work/key.json\"}" >"$work/daemon.json"
dockerd --config-file "$work/daemon.json" --host "$DOCKER_HOST" --data-root "$data_root" --exec-root "$work/exec" \
  --pidfile "$work/dockerd.pid" --bridge none --iptables=false --ip-forward=false --ip-masq=false \
  >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
echo "$dockerd_pid" >"$cache/dockerd.pid"
for _ in $(seq 1 120); do
  docker info >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || { show_tail "$work/dockerd.log"; dockerd_pid=""; fail "dockerd exited at start (log above)"; }
  sleep 0.5
done
docker info >/dev/null 2>&1 || { show_tail "$work/dockerd.log"; fail "dockerd did not answer within 60 s (log above)"; }
say "dockerd $(docker version --format '{{.Server.Version}}') running as pid $dockerd_pid, data root $data_root"
# A run that was killed can leave containers, volumes and networks behind.
remove_all_containers
docker volume prune -f >/dev/null 2>&1
docker network prune -f >/dev/null 2>&1
finish dockerd

# 5. Images ------------------------------------------------------------------------------------------
imported_key=$(docker image inspect --format '{{ index .Config.Labels "cemsplit.base-key" }}' "$base_image" 2>/dev/null)
if [ "$imported_key" = "$base_key" ]; then
  begin "reusing the base image $base_image"
else
  begin "importing the base image $base_image"
  docker import --change "LABEL cemsplit.base-key=$base_key" - "$base_image" <"$base_tar" >/dev/null \
    || fail "docker import of $base_tar failed"
fi
finish import

begin "building $image from the local wheels (docker build --network none)"
# The build stage gets a tag of its own, so that removing unused images keeps its layers cached.
for target in build final; do
  tag=$image
  target_option=()
  if [ "$target" = build ]; then
    tag=$build_stage_image
    target_option=(--target build)
  fi
  docker build --network none "${target_option[@]}" --build-arg BASE_IMAGE="$base_image" -t "$tag" . >>"$work/build.log" 2>&1 \
    || { show_tail "$work/build.log"; fail "docker build of the $target stage failed (log above)"; }
done
grep "^pip_install.sh: " "$work/build.log" | sed 's/^/  /'
say "$(grep -c "Using cache" "$work/build.log") build steps came from the layer cache"
say "image $image: $(docker image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.2f GB", $1 / 1e9 }')"
finish build

# 6. Compose run -------------------------------------------------------------------------------------
begin "running docker-compose: attacker, server, client, then reporter (config $run_config)"
[ -f "$run_config" ] || fail "config file $run_config not found; set CEMSPLIT_E2E_CONFIG to a file in the repository"
# The certs service writes a development CA and certificates into the project's certs volume.
export CEMSPLIT_IMAGE=$image CEMSPLIT_CONFIG=$run_config
compose config -q || fail "docker-compose config rejected docker-compose.yml"
# docker-compose is a Python program: unbuffered, its progress lines appear as they happen.
# Its pid goes to the cache, so that a later run can stop it if this script is killed.
PYTHONUNBUFFERED=1 timeout "$run_timeout" docker-compose -p "$project" run -T --rm reporter \
  > >(tee "$work/compose-run.log" | sed 's/^/  /') 2>&1 &
compose_pid=$!
echo "$compose_pid" >"$cache/compose.pid"
wait "$compose_pid"
run_status=$?
rm -f "$cache/compose.pid"
if [ "$run_status" -ne 0 ]; then
  echo "----- container states -----"
  compose ps 2>&1 | sed 's/^/  /'
  for service in attacker server client; do
    echo "----- last 30 log lines of $service -----"
    compose logs --no-color --tail=30 "$service" 2>&1 | sed 's/^/  /'
  done
  [ "$run_status" -eq 124 ] && fail "the compose run did not finish within $run_timeout s (CEMSPLIT_E2E_TIMEOUT)"
  fail "docker-compose run reporter exited with status $run_status (container states and logs above)"
fi
finish compose-run

# 7. Report -------------------------------------------------------------------------------------------
begin "checking report.json"
rm -rf "$out"
mkdir -p "$out/logs"
compose logs --no-color >"$out/logs/compose.log" 2>&1
docker run --rm --network none -v "${project}_runs:/runs:ro" --entrypoint tar "$image" -C /runs -cf - . | tar -xf - -C "$out" \
  || fail "cannot copy the runs volume ${project}_runs out of docker"
python3 - "$out/report.json" <<'EOF' || fail "report.json is missing or incomplete (see above)"
import json
import math
import sys
from pathlib import Path

path = Path(sys.argv[1])
if not path.is_file():
    sys.exit(f"{path} not found; the reporter did not write it")
report = json.loads(path.read_text())
problems = []
for key in ("test_accuracy", "defense", "attack", "recording", "timing", "dataset", "epochs", "session_id"):
    if key not in report:
        problems.append(f"key {key!r} missing")
white_box = report.get("attack", {}).get("white_box", {})
for key in ("mse", "psnr", "ssim"):
    if not isinstance(white_box.get(key), (int, float)) or not math.isfinite(white_box[key]):
        problems.append(f"attack.white_box.{key} is {white_box.get(key)!r}, expected a finite number")
if white_box.get("images_scored", 0) <= 0:
    problems.append(f"attack.white_box.images_scored is {white_box.get('images_scored')!r}, expected > 0")
accuracy = report.get("test_accuracy", 0.0)
# Chance on the ten digit classes is 0.1.
if not 0.2 < accuracy <= 1.0:
    problems.append(f"test_accuracy {accuracy!r} is not above chance (expected > 0.2)")
if not (path.parent / white_box.get("grid", "attacker/white_box.png")).is_file():
    problems.append("the reconstruction grid attacker/white_box.png is missing")
if problems:
    sys.exit("\n".join(f"report.json: {problem}" for problem in problems))
print(
    f"  report.json: test accuracy {accuracy:.4f}, attack MSE {white_box['mse']:.5f}, "
    f"SSIM {white_box['ssim']:.4f}, {white_box['images_scored']} images, "
    f"{report['recording']['received']} records received"
)
EOF
finish report
