<?php
// Gearman HQ bench: one sequential foreground client, COUNT doNormal() calls.
// Usage: php client_fg.php HOST PORT FUNCTION COUNT
// stdout: "start NS", one round-trip latency in ns per line, "end NS OK FAILED".
declare(strict_types=1);

[$_, $host, $port, $function, $count] = $argv + array_fill(0, 5, null);
if ($count === null) {
    fwrite(STDERR, "usage: client_fg.php HOST PORT FUNCTION COUNT\n");
    exit(2);
}
$count = (int) $count;

$client = new GearmanClient();
$client->addServer($host, (int) $port);
$client->setTimeout(30000); // ms: fail instead of hanging when the path is broken
$pad = str_repeat('x', 48);
$lines = [];
$failed = 0;

$start = hrtime(true);
for ($i = 0; $i < $count; $i++) {
    $payload = json_encode(['client' => 'fg', 'seq' => $i, 'kind' => 'bench', 'pad' => $pad]);
    $t0 = hrtime(true);
    $result = $client->doNormal($function, $payload);
    $lines[] = hrtime(true) - $t0;
    if ($client->returnCode() !== GEARMAN_SUCCESS || $result !== $payload) {
        $failed++;
    }
}
$end = hrtime(true);

fwrite(STDOUT, "start $start\n" . implode("\n", $lines) . "\nend $end " . ($count - $failed) . " $failed\n");
exit($failed === 0 ? 0 : 1);
