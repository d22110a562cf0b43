<?php
// Gearman HQ fault bench: a worker that says which job it ran and how it ended, and
// that outlives its gearmand (or the proxy in front of it): it reconnects and goes on.
// Usage: php fault_worker.php HOST PORT FUNCTION WORKER_ID
// A job whose JSON payload has "f": 1 is failed (WORK_FAIL); the others return the payload.
// stdout, one line per job, after work() returned (NS = hrtime(), CLOCK_MONOTONIC):
//   "J NS HANDLE UNIQUE C"   WORK_COMPLETE was sent
//   "J NS HANDLE UNIQUE F"   WORK_FAIL was sent
//   "J NS HANDLE UNIQUE X"   the job ran but its answer could not be sent (connection lost):
//                            gearmand will requeue it, or it died with gearmand
// Runs until killed (the bench stops its process group).
declare(strict_types=1);

[$_, $host, $port, $function, $workerId] = $argv + array_fill(0, 5, null);
if ($workerId === null) {
    fwrite(STDERR, "usage: fault_worker.php HOST PORT FUNCTION WORKER_ID\n");
    exit(2);
}

$current = null; // [handle, unique, outcome] of the job the callback ran

$worker = new GearmanWorker();
$worker->addServer($host, (int) $port);
$worker->setId($workerId);
$worker->setTimeout(1000); // ms: come back from work() now and then while gearmand is away
$worker->addFunction($function, static function (GearmanJob $job) use (&$current): ?string {
    $body = $job->workload();
    $data = json_decode($body, true);
    $fail = is_array($data) && ($data['f'] ?? 0) === 1;
    $current = [$job->handle(), $job->unique(), $fail ? 'F' : 'C'];
    if ($fail) {
        $job->setReturn(GEARMAN_WORK_FAIL);
        return null;
    }
    return $body;
});

$sent = [GEARMAN_SUCCESS, GEARMAN_WORK_FAIL];
$idle = [GEARMAN_IO_WAIT, GEARMAN_NO_JOBS, GEARMAN_TIMEOUT];
while (true) {
    $current = null;
    $ok = @$worker->work();
    $rc = $worker->returnCode();
    if ($current !== null) {
        [$handle, $unique, $outcome] = $current;
        if (!in_array($rc, $sent, true)) {
            $outcome = 'X';
        }
        fwrite(STDOUT, 'J ' . hrtime(true) . " $handle $unique $outcome\n");
    } elseif (!$ok && !in_array($rc, $idle, true)) {
        fwrite(STDERR, "worker $workerId: work(): rc $rc " . $worker->error() . "\n");
        usleep(100_000);
    }
}
