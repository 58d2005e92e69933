<?php
// The incident-003 client: unmodified php-redis making short connections
// with a 100 ms connect budget, as the write-up's PHP application did.
//
// usage: php php_redis_loop.php HOST PORT COUNT CONNECT_TIMEOUT_S MAX_SECONDS
//
// Each iteration: new Redis(); connect(HOST, PORT, CONNECT_TIMEOUT_S);
// ping(); close(). A RedisException is classified by its message: one
// containing "timed out" ("Connection timed out", "timed out") is a connect
// timeout, anything else is "other". The loop stops after COUNT iterations
// or MAX_SECONDS, whichever comes first. Prints one JSON line:
//   {"iterations":N,"ok":N,"timed_out":N,"other":N,"messages":{"msg":n,...},
//    "connect_ms":{"p50":x,"p99":x,"max":x},"wall_s":x,"pid":PID}
// Exit status 0 when the loop ran (whatever the errors), 3 when the redis
// extension is missing.
if (!class_exists('Redis')) {
    fwrite(STDERR, "php-redis is not loaded (apt-get install -y php-redis)\n");
    exit(3);
}
if ($argc != 6) {
    fwrite(STDERR, "usage: php php_redis_loop.php HOST PORT COUNT CONNECT_TIMEOUT_S MAX_SECONDS\n");
    exit(64);
}
[$host, $port, $count, $budget, $max_s] = [$argv[1], (int)$argv[2], (int)$argv[3], (float)$argv[4], (float)$argv[5]];

$ok = $timed_out = $other = 0;
$messages = [];
$latency = [];
$start = hrtime(true);
$i = 0;
for (; $i < $count; ++$i) {
    if ((hrtime(true) - $start) / 1e9 > $max_s) break;
    $r = new Redis();
    $t0 = hrtime(true);
    try {
        $r->connect($host, $port, $budget);
        $latency[] = (hrtime(true) - $t0) / 1e6;
        $pong = $r->ping();
        if ($pong !== true && $pong !== '+PONG' && $pong !== 'PONG') {
            throw new RedisException("unexpected PING reply: " . var_export($pong, true));
        }
        $ok++;
    } catch (RedisException $e) {
        $msg = $e->getMessage();
        $messages[$msg] = ($messages[$msg] ?? 0) + 1;
        if (stripos($msg, 'timed out') !== false) $timed_out++;
        else $other++;
    }
    try { $r->close(); } catch (RedisException $e) { }
}
sort($latency);
$pct = function (float $p) use ($latency) {
    if (!$latency) return null;
    $k = (int)ceil($p / 100 * count($latency)) - 1;
    return round($latency[max(0, min($k, count($latency) - 1))], 3);
};
echo json_encode([
    'iterations' => $i, 'ok' => $ok, 'timed_out' => $timed_out, 'other' => $other,
    'messages' => (object)$messages,
    'connect_ms' => ['p50' => $pct(50), 'p99' => $pct(99), 'max' => $latency ? round(end($latency), 3) : null],
    'wall_s' => round((hrtime(true) - $start) / 1e9, 3), 'pid' => getmypid(),
]), "\n";
