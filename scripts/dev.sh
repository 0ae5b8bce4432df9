#!/usr/bin/env bash
# Set up this repository on Debian 12 and run the node or the test suite.
#
#   bash scripts/dev.sh run                    set up, then run the node (ainode serve)
#   bash scripts/dev.sh test [pytest...]       set up with test tools, run the gates, then all tests (CI);
#                                              with arguments, pytest with those arguments instead
#   bash scripts/dev.sh test-fast [pytest...]  venv only: ruff, lint-imports, then the tests not marked
#                                              integration (they need no program outside the venv)
#
# The gates of `test`: ruff check, ruff format --check, mypy, lint-imports (configured in
# pyproject.toml). Each prints its name and result; pytest runs even when a gate failed, and the
# command exits non-zero if a gate or pytest failed.
# `test` without arguments runs the suite in two phases, one verdict: the tests not marked integration
# on two pytest-xdist workers (as test-fast), then the integration tests in one process (they start
# servers, node processes and browsers, and some measure time). Both phases always run; each prints its
# result and duration; the exit status is non-zero if a gate or either phase failed.
#
# Set-up is idempotent and fast when nothing changed:
# - Debian packages: installed only when missing (apt-get update only then).
#   `run` and `test-fast` need only a Python >= 3.11 with venv; `test` also needs Orthanc with
#   its DICOMweb plugin, DCMTK, dicom3tools, PostgreSQL and Chromium, whose system
#   services are kept stopped: tests start their own instances on free ports.
# - .venv: created with a Python >= 3.11; `pip install -e .[extras]` re-runs
#   only when pyproject.toml changed or more extras are needed (stamp in .venv).
#
# Environment: AINODE_PYTHON (interpreter for a new .venv), AINODE_EXTRAS
# (pip extras, default "postgres" for run, "test,postgres,distributed,train,yolo" for test and test-fast).
# These two belong to this script: the node's settings loader ignores them
# (node.settings.NOT_SETTINGS), although they share the AINODE_ prefix.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.ainode-install"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

TEST_PACKAGES=(orthanc orthanc-dicomweb dcmtk dicom3tools postgresql rabbitmq-server strace chromium)
SERVICES=(orthanc postgresql rabbitmq-server)

say() { printf '[dev.sh] %s\n' "$*"; }
die() { printf '[dev.sh] error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: bash scripts/dev.sh run                    set up, then run the node
       bash scripts/dev.sh test [pytest...]       set up, run the gates, then the whole test suite
                                                  (with arguments: pytest with them)
       bash scripts/dev.sh test-fast [pytest...]  venv only: ruff, lint-imports, tests not marked integration
EOF
    exit 2
}

# A Python that can make the venv: >= 3.11 with the venv and ensurepip modules
# (Debian splits them into python3-venv).
python_fits() {
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in "${AINODE_PYTHON:-}" python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 && python_fits "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

missing_packages() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            printf '%s\n' "$pkg"
        fi
    done
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || die "'$*' needs root: run as root or allow sudo without a password"
    else
        die "'$*' needs root"
    fi
}

# Debian's orthanc and postgresql packages start their services (ports 4242,
# 8042, 5432) when installed. A policy-rc.d that answers 101 forbids that for
# the duration of the install; we remove it afterwards if it was ours.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
forbid_service_starts() {
    if [ ! -e "$POLICY" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
        OWN_POLICY=1
    fi
}
allow_service_starts() {
    if [ "$OWN_POLICY" -eq 1 ]; then
        as_root rm -f "$POLICY"
        OWN_POLICY=0
    fi
}
trap allow_service_starts EXIT

# Keep the system services of packages we just installed stopped and off at
# boot; the tests and the node never use them.
stop_services() {
    local svc
    for svc in "${SERVICES[@]}"; do
        if [ -d /run/systemd/system ] && systemctl list-unit-files "$svc.service" >/dev/null 2>&1; then
            as_root systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
        elif [ -x "/etc/init.d/$svc" ]; then
            as_root "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
    done
}

apt_lists_fresh() {
    # Package lists younger than a day are good enough to install from.
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 -print -quit 2>/dev/null)" ]
}

ensure_packages() {
    local missing
    missing="$(missing_packages "$@")"
    [ -n "$missing" ] || return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages: $(echo $missing) (and no apt-get to install them)"
    # shellcheck disable=SC2086  # one package name per word
    say "installing Debian packages: $(echo $missing)"
    forbid_service_starts
    if ! apt_lists_fresh; then
        as_root apt-get update -q </dev/null
    fi
    # shellcheck disable=SC2086
    if ! as_root apt-get install -y -q --no-install-recommends $missing </dev/null; then
        say "install failed; refreshing package lists and retrying"
        as_root apt-get update -q </dev/null
        # shellcheck disable=SC2086
        as_root apt-get install -y -q --no-install-recommends $missing </dev/null
    fi
    allow_service_starts
    stop_services
}

ensure_python() {
    if ! find_python >/dev/null; then
        ensure_packages python3 python3-venv >&2  # stdout is the interpreter's path
    fi
    find_python || die "no Python >= 3.11 with the venv module (Debian: python3 python3-venv)"
}

venv_fits() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 &&
        "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

# pip install -e .[extras] when pyproject.toml changed since the last install
# or when extras not installed yet are needed. The stamp holds the checksum
# of pyproject.toml and the installed extras.
ensure_venv() {
    local wanted="$1" python checksum stamped_sum="" stamped_extras="" extras
    if ! venv_fits; then
        python="$(ensure_python)"
        [ -e "$VENV" ] && say "replacing unusable $VENV"
        rm -rf "$VENV"
        say "creating .venv with $python ($("$python" --version 2>&1))"
        "$python" -m venv "$VENV"
    fi
    checksum="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ -f "$STAMP" ]; then
        read -r stamped_sum stamped_extras <"$STAMP" || true
    fi
    # Extras as a sorted list, so that the stamp compares equal across commands.
    if [ "$stamped_sum" = "$checksum" ]; then
        extras="$(printf '%s\n' ${wanted//,/ } ${stamped_extras//,/ } | sort -u | paste -sd, -)"
        [ "$extras" = "$stamped_extras" ] && return 0
    else
        extras="$(printf '%s\n' ${wanted//,/ } | sort -u | paste -sd, -)"
    fi
    say "pip install -e .[$extras] (log: .venv/pip-install.log)"
    # The log keeps setuptools' build chatter out of the test output.
    if ! "$VENV/bin/python" -m pip install -e ".[$extras]" </dev/null >"$VENV/pip-install.log" 2>&1; then
        tail -n 40 "$VENV/pip-install.log" >&2
        die "pip install failed; full log in .venv/pip-install.log"
    fi
    printf '%s %s\n' "$checksum" "$extras" >"$STAMP"
}

# Gates: each prints its name and result; a failed one is remembered and the run goes on.
FAILED_GATES=()
gate() {
    local name="$1"
    shift
    say "gate: $name"
    if "$@" </dev/null; then
        say "gate: $name: passed"
    else
        say "gate: $name: FAILED"
        FAILED_GATES+=("$name")
    fi
}

# pytest with the arguments given; its exit status, 5 (no test collected) counting as a failure.
run_pytest() {
    local status=0
    "$VENV/bin/python" -m pytest "$@" </dev/null || status=$?
    [ "$status" -eq 5 ] && status=1
    return "$status"
}

# The verdict over the gates and the tests' exit status (the first argument).
verdict() {
    local status="$1"
    if [ "${#FAILED_GATES[@]}" -gt 0 ]; then
        say "failed gates: ${FAILED_GATES[*]}"
        [ "$status" -eq 0 ] && status=1
    fi
    return "$status"
}

# pytest with the arguments given, then the verdict over the gates and pytest.
pytest_and_verdict() {
    local status=0
    run_pytest "$@" || status=$?
    verdict "$status"
}

# One phase of the suite: its name, then pytest's arguments. Prints the result and the duration.
PHASE_FAILED=()
phase() {
    local name="$1" start=$SECONDS status=0
    shift
    say "tests: $name"
    run_pytest "$@" || status=$?
    if [ "$status" -eq 0 ]; then
        say "tests: $name: passed in $((SECONDS - start)) s"
    else
        say "tests: $name: FAILED (pytest exit $status) in $((SECONDS - start)) s"
        PHASE_FAILED+=("$name")
    fi
}

# The whole suite in two phases (both always run), then the verdict over the gates and both phases.
# The tests not marked integration need nothing outside the venv and share no port or file, so two
# pytest-xdist workers run them in about half the time; the integration tests stay in one process.
test_phases() {
    local status=0
    phase "not integration, 2 workers" -m "not integration" -n 2
    # The 25 slowest integration tests are listed at the end: where CI's time goes, run after run.
    phase "integration, 1 process" -m integration --durations=25
    if [ "${#PHASE_FAILED[@]}" -gt 0 ]; then
        say "failed test phases: ${PHASE_FAILED[*]}"
        status=1
    fi
    verdict "$status"
}

main() {
    [ $# -ge 1 ] || usage
    local command="$1"
    shift
    case "$command" in
    run)
        ensure_venv "${AINODE_EXTRAS:-postgres}"
        exec "$VENV/bin/ainode" serve "$@"
        ;;
    test)
        ensure_packages "${TEST_PACKAGES[@]}"
        # tests/viewer: the pinned OHIF build (scripts/ohif.sh, fetched once into .cache/ohif with npm;
        # Node.js from Debian only when no npm is there: a NodeSource nodejs carries its own).
        command -v npm >/dev/null 2>&1 || ensure_packages nodejs npm
        bash "$ROOT/scripts/ohif.sh" >/dev/null
        ensure_venv "${AINODE_EXTRAS:-test,postgres,distributed,train,yolo}"
        gate "ruff check" "$VENV/bin/ruff" check .
        gate "ruff format" "$VENV/bin/ruff" format --check .
        gate "mypy" "$VENV/bin/mypy"
        gate "lint-imports" "$VENV/bin/lint-imports"
        local status=0
        if [ $# -eq 0 ]; then
            test_phases || status=$?
        else
            pytest_and_verdict "$@" || status=$?
        fi
        exit "$status"
        ;;
    test-fast)
        # No Debian package: the tests not marked integration need only the venv. Two pytest-xdist
        # workers (about half the time on two cores); `-n 0` among the arguments runs in one process.
        ensure_venv "${AINODE_EXTRAS:-test,postgres,distributed,train,yolo}"
        gate "ruff check" "$VENV/bin/ruff" check .
        gate "ruff format" "$VENV/bin/ruff" format --check .
        gate "lint-imports" "$VENV/bin/lint-imports"
        local status=0
        pytest_and_verdict -m "not integration" -n 2 "$@" || status=$?
        exit "$status"
        ;;
    *)
        usage
        ;;
    esac
}

# Sourcing the file (for a dry run of its functions) does not run anything.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
