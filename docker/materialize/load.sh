#!/usr/bin/env bash
# The demo's live data: a price tick every 100 ms and a trade every 2 s, written to Materialize
# with psql (the `loader` service, after `setup` ran setup.sql). MATERIALIZE_URL names the
# database.
set -euo pipefail
url="${MATERIALIZE_URL:?set MATERIALIZE_URL}"

echo "writing price ticks and trades"

trade_id=$(psql "$url" -qtAc 'SELECT COALESCE(max(id), 0) FROM trades')
i=0
while true; do
  instrument=$((RANDOM % 3 + 1))
  # A move of up to ±0.10.
  step=$(printf '0.%02d' $((RANDOM % 11)))
  op=$([ $((RANDOM % 2)) -eq 0 ] && echo '+' || echo '-')
  psql "$url" -qc "UPDATE prices SET price = greatest(1, price $op $step), updated_at = now() WHERE instrument_id = $instrument"
  i=$((i + 1))
  if [ $((i % 20)) -eq 0 ]; then
    trade_id=$((trade_id + 1))
    side=$([ $((RANDOM % 2)) -eq 0 ] && echo buy || echo sell)
    quantity=$((RANDOM % 8000 + 2000))
    psql "$url" -qc "INSERT INTO trades SELECT $trade_id, $instrument, '$side', $quantity, price, now() FROM prices WHERE instrument_id = $instrument"
  fi
  sleep 0.1
done
