# shellcheck shell=bash
# Helpers for scripts/test (sourced, never executed). Environment knobs, all optional:
#   MISSION_LEDGER_TEST_DATABASE_URL=...  use this database as is: no provisioning, no reset
#   MISSION_LEDGER_FORCE_THROWAWAY_PG=1   ignore 127.0.0.1:5432 and start a throwaway cluster
#                                         (how the fallback path is exercised on purpose)
#   PYTHON=...                            interpreter that creates .venv (default: python3)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TEST_DB=mission_ledger_test
PG_TMP="" PG_BIN="" PG_PORT="" PG_RUN=()

say() { printf '==> %s\n' "$*"; }

# Create .venv (again, if its python is broken) and install the project with its dev extras.
# The install is skipped while .venv/.installed-<sha256 of pyproject.toml> exists.
ensure_venv() {
  if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "creating virtualenv in .venv"
    rm -rf "$VENV" && "${PYTHON:-python3}" -m venv "$VENV"
  fi
  local stamp
  stamp="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-64)"
  if [[ ! -f $stamp ]]; then
    say "installing mission-ledger[dev] into .venv"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "${ROOT}[dev]"
    rm -f "$VENV"/.installed-* && touch "$stamp"
  fi
  export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
}

# pg_up PORT: true when 127.0.0.1:PORT accepts user postgres (pg_isready first, when present).
pg_up() {
  if command -v pg_isready >/dev/null; then
    pg_isready -q -h 127.0.0.1 -p "$1" -U postgres -t 3 || return 1
  fi  # pg_isready ignores authentication: a real connection proves we can get in
  "$VENV/bin/python" - "$1" &>/dev/null <<'EOF'
import sys, psycopg
psycopg.connect(f"postgresql://postgres@127.0.0.1:{sys.argv[1]}/postgres", connect_timeout=3)
EOF
}

# The directory holding initdb and pg_ctl: newest /usr/lib/postgresql/*/bin, else from PATH.
find_pg_bindir() {
  local d
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV) \
           "$(dirname "$(command -v initdb || echo /nonexistent/initdb)")"; do
    if [[ -x $d/initdb && -x $d/pg_ctl ]]; then echo "$d"; return 0; fi
  done
  return 1
}

# Start a cluster in /tmp on a free port (PG_PORT); an EXIT trap stops and deletes it.
start_throwaway_pg() {
  if ! PG_BIN=$(find_pg_bindir); then
    [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null || return 1
    say "no PostgreSQL binaries: apt-get install postgresql"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
      >/dev/null || return 1
    PG_BIN=$(find_pg_bindir) || return 1
  fi
  local user=""  # initdb refuses to run as root: use an unprivileged system user
  if [[ $EUID -eq 0 ]]; then
    user=postgres
    id -u postgres &>/dev/null || user=mlpg
    id -u "$user" &>/dev/null || useradd --system --no-create-home -s /usr/sbin/nologin mlpg
    PG_RUN=(runuser -u "$user" --)
  fi
  PG_PORT=55432  # first port nobody answers on (bash's /dev/tcp connects when in use)
  while (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; do
    ((PG_PORT++ < 55532)) || return 1
  done
  PG_TMP=$(mktemp -d /tmp/mission-ledger-pg.XXXXXX) || return 1
  trap stop_throwaway_pg EXIT
  if [[ -n $user ]]; then chown "$user" "$PG_TMP"; fi
  say "starting throwaway PostgreSQL ($PG_BIN) on 127.0.0.1:$PG_PORT in $PG_TMP"
  if ! (cd "$PG_TMP" &&
        "${PG_RUN[@]}" "$PG_BIN/initdb" -D "$PG_TMP/data" -U postgres -A trust -E UTF8 \
          --locale=C >"$PG_TMP/initdb.log" 2>&1 &&
        "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 \
          -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_TMP" start >/dev/null); then
    cat "$PG_TMP"/*.log >&2 || true
    return 1
  fi
}

stop_throwaway_pg() {
  [[ -n $PG_TMP ]] || return 0
  say "stopping throwaway PostgreSQL"
  (cd / && "${PG_RUN[@]}" "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m fast -w stop &>/dev/null) || true
  rm -rf "$PG_TMP" && PG_TMP=""
}

# Export MISSION_LEDGER_TEST_DATABASE_URL for a freshly recreated mission_ledger_test database;
# return 1 when no PostgreSQL can be reached or started.
provision_postgres() {
  if [[ -n ${MISSION_LEDGER_TEST_DATABASE_URL:-} ]]; then
    say "using MISSION_LEDGER_TEST_DATABASE_URL as given"
    return 0
  fi
  local port=5432
  if [[ ${MISSION_LEDGER_FORCE_THROWAWAY_PG:-} == 1 ]] || ! pg_up 5432; then
    start_throwaway_pg && pg_up "$PG_PORT" || return 1
    port=$PG_PORT
  fi
  say "recreating database $TEST_DB on 127.0.0.1:$port"
  "$VENV/bin/python" - "$port" "$TEST_DB" <<'EOF' || return 1
import sys, psycopg
port, db = sys.argv[1:]
with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as c:
    c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    c.execute(f'CREATE DATABASE "{db}"')
EOF
  export MISSION_LEDGER_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/$TEST_DB"
}
