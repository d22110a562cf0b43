<?php
// Gearman HQ bench: submit COUNT background jobs as fast as possible.
// Usage: php client_bg.php HOST PORT FUNCTION COUNT CLIENT_ID
// stdout: "start NS", one submit latency in ns per line (SUBMIT_JOB_BG → JOB_CREATED),
//         "end NS OK FAILED". NS are hrtime() values (CLOCK_MONOTONIC).
declare(strict_types=1);

[$_, $host, $port, $function, $count, $clientId] = $argv + array_fill(0, 6, null);
if ($clientId === null) {
    fwrite(STDERR, "usage: client_bg.php HOST PORT FUNCTION COUNT CLIENT_ID\n");
    exit(2);
}
$count = (int) $count;

$client = new GearmanClient();
$client->addServer($host, (int) $port);
$client->setTimeout(30000); // ms: fail instead of hanging when the path is broken
$pad = str_repeat('x', 48);
$out = fopen('php://stdout', 'w');
$lines = [];
$failed = 0;

$start = hrtime(true);
for ($i = 0; $i < $count; $i++) {
    // ~100 bytes of JSON
    $payload = json_encode(['client' => $clientId, 'seq' => $i, 'kind' => 'bench', 'pad' => $pad]);
    $t0 = hrtime(true);
    $client->doBackground($function, $payload);
    $lines[] = hrtime(true) - $t0;
    if ($client->returnCode() !== GEARMAN_SUCCESS) {
        $failed++;
    }
}
$end = hrtime(true);

fwrite($out, "start $start\n" . implode("\n", $lines) . "\nend $end " . ($count - $failed) . " $failed\n");
exit($failed === 0 ? 0 : 1);
