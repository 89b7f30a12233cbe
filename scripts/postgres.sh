#!/usr/bin/env bash
# PostgreSQL for freshrec's tests and CI (issue 19): the PostgreSQL event store's conformance suite starts a
# throwaway cluster of its own (test/data/postgres-cluster.ts: initdb in a temp folder, a free port, trust auth,
# removed afterwards), so all a machine needs is the server's binaries, Debian's `postgresql` package.
#
#   bash scripts/postgres.sh install   # installs the package when initdb/pg_ctl are missing (needs root), prints the bin dir
#   bash scripts/postgres.sh bindir    # prints the folder holding initdb and pg_ctl; exit 1 when there is none
#
# Debian keeps the binaries off PATH, under /usr/lib/postgresql/<version>/bin; the newest version found there wins.
# PostgreSQL refuses to run as root: as root, the harness runs initdb and the server as the `postgres` user that the
# package creates (runuser); as any other user it runs them as that user.
set -euo pipefail

bindir() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]]; then echo "$dir"; return 0; fi
  done
  if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" && -x "$(pg_config --bindir)/pg_ctl" ]]; then
    pg_config --bindir; return 0
  fi
  return 1
}

case "${1:-}" in
  bindir)
    bindir || { echo "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: run 'bash scripts/postgres.sh install' as root" >&2; exit 1; }
    ;;
  install)
    if dir=$(bindir); then echo "$dir"; exit 0; fi
    if [[ $(id -u) -ne 0 ]]; then
      echo "PostgreSQL's server is not installed and installing it needs root: run 'sudo bash scripts/postgres.sh install' (Debian's postgresql package)" >&2
      exit 1
    fi
    echo "installing Debian's postgresql package (initdb/pg_ctl missing)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    # The package's own cluster (/var/lib/postgresql/<v>/main) is not used; policy-rc.d may keep it from starting.
    apt-get install -y --no-install-recommends postgresql >&2
    id postgres >/dev/null 2>&1 || { echo "the postgresql package did not create the postgres user" >&2; exit 1; }
    bindir || { echo "postgresql installed but no initdb/pg_ctl under /usr/lib/postgresql/*/bin" >&2; exit 1; }
    ;;
  *)
    echo "usage: bash scripts/postgres.sh install|bindir" >&2
    exit 2
    ;;
esac
