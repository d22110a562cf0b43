<?php
// Gearman HQ fault bench: submit jobs at a steady rate for a while, naming each one.
// Usage: php paced_client.php HOST PORT FUNCTION RATE SECONDS CLIENT_ID TAG [bg|fg] [FAIL_EVERY]
//   bg: doBackground() paced at RATE jobs/s; fg: doNormal() one after the other, at most RATE/s.
//   Job SEQ has the unique key TAG-CLIENT_ID-SEQ and a JSON payload {"c","s","f"}; "f": 1 on
//   every FAIL_EVERY-th job (0: none) asks the worker (fault_worker.php) to fail it.
// stdout, one line per attempt (NS = hrtime(), CLOCK_MONOTONIC):
//   "S NS UNIQUE HANDLE"        gearmand created the job (bg), or it completed (fg)
//   "F NS UNIQUE HANDLE"        fg only: the worker failed it (WORK_FAIL reached the client)
//   "E NS UNIQUE RC MESSAGE"    the call failed: the client does not know whether it ran
// and a last line "end NS ATTEMPTS ERRORS". After an error the client waits 100 ms, as a
// client with a short retry backoff would, and goes on with the next job (libgearman
// reconnects by itself on the next call). Behind on schedule, it catches up at most 0.5 s.
declare(strict_types=1);

[$_, $host, $port, $function, $rate, $seconds, $clientId, $tag, $mode, $failEvery] =
    $argv + array_fill(0, 10, null);
if ($tag === null) {
    fwrite(STDERR, "usage: paced_client.php HOST PORT FUNCTION RATE SECONDS CLIENT_ID TAG"
        . " [bg|fg] [FAIL_EVERY]\n");
    exit(2);
}
$rate = max(0.1, (float) $rate);
$mode = $mode ?? 'bg';
$failEvery = (int) ($failEvery ?? 0);

$client = new GearmanClient();
$client->addServer($host, (int) $port);
$client->setTimeout(2000); // ms: a stalled path is an error after 2 s, not a hang

$interval = (int) (1e9 / $rate);
$start = hrtime(true);
$stop = $start + (int) ((float) $seconds * 1e9);
$due = $start;
$lines = [];
$errors = 0;
$seq = 0;

function flush_lines(array &$lines): void
{
    if ($lines) {
        fwrite(STDOUT, implode("\n", $lines) . "\n");
        $lines = [];
    }
}

while (true) {
    $now = hrtime(true);
    if ($now >= $stop) {
        break;
    }
    if ($due > $now) {
        usleep(intdiv($due - $now, 1000));
    }
    $due = max($due + $interval, hrtime(true) - 500_000_000);
    $unique = "$tag-$clientId-$seq";
    $fail = $failEvery > 0 && $seq % $failEvery === $failEvery - 1 ? 1 : 0;
    $payload = json_encode(['c' => $clientId, 's' => $seq, 'f' => $fail]);
    $seq++;
    if ($mode === 'fg') {
        $result = @$client->doNormal($function, $payload, $unique);
    } else {
        $result = @$client->doBackground($function, $payload, $unique);
    }
    $rc = $client->returnCode();
    $at = hrtime(true);
    if ($rc === GEARMAN_SUCCESS) {
        $handle = $mode === 'fg' ? $client->doJobHandle() : $result;
        $lines[] = "S $at $unique $handle";
    } elseif ($mode === 'fg' && $rc === GEARMAN_WORK_FAIL) {
        $lines[] = "F $at $unique " . $client->doJobHandle();
    } else {
        $errors++;
        $message = preg_replace('/\s+/', ' ', (string) $client->error());
        $lines[] = "E $at $unique $rc $message";
        flush_lines($lines);
        usleep(100_000);
    }
    if (count($lines) >= 500) {
        flush_lines($lines);
    }
}
flush_lines($lines);
fwrite(STDOUT, "end " . hrtime(true) . " $seq $errors\n");
exit(0);
