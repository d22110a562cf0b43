<?php
// Gearman HQ bench: a no-op worker that returns the workload.
// Usage: php worker.php HOST PORT FUNCTION
// Runs until killed (the bench sends SIGTERM to its process group).
declare(strict_types=1);

[$_, $host, $port, $function] = $argv + [null, null, null, null];
if ($function === null) {
    fwrite(STDERR, "usage: worker.php HOST PORT FUNCTION\n");
    exit(2);
}

$worker = new GearmanWorker();
$worker->addServer($host, (int) $port);
$worker->addFunction($function, static fn (GearmanJob $job): string => $job->workload());

while ($worker->work()) {
    if ($worker->returnCode() !== GEARMAN_SUCCESS) {
        fwrite(STDERR, "worker: " . $worker->error() . "\n");
        exit(1);
    }
}
fwrite(STDERR, "worker: " . $worker->error() . "\n");
exit(1);
