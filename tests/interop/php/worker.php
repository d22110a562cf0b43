<?php
// A PHP (pecl gearman / libgearman) worker for HQ's interop tests.
// usage: php worker.php PORT CLIENT_ID [FUNCTION ...]
// Functions: reverse, progress, fail, exception, slow. Prints "ready" once registered.
$port = (int)$argv[1];
$id = $argv[2] ?? 'w-1';
$only = array_slice($argv, 3);

$functions = [
    'reverse' => function (GearmanJob $job) {
        return strrev($job->workload());
    },
    'progress' => function (GearmanJob $job) {
        for ($i = 1; $i <= 3; $i++) {
            usleep(30000);
            $job->sendStatus($i, 3);
        }
        usleep(30000);
        return 'progress done';
    },
    'fail' => function (GearmanJob $job) {
        $job->sendFail();
        $job->setReturn(GEARMAN_WORK_FAIL);
        return null;
    },
    'exception' => function (GearmanJob $job) {
        $job->sendException('bad input');
        $job->setReturn(GEARMAN_WORK_EXCEPTION);
        return null;
    },
    'slow' => function (GearmanJob $job) {
        $ms = (int)$job->workload();
        fwrite(STDOUT, "slow start {$job->handle()} {$ms}\n");
        usleep($ms * 1000);
        return "slept $ms";
    },
];

$worker = new GearmanWorker();
$worker->addServer('127.0.0.1', $port);
$worker->setId($id);
foreach ($functions as $name => $fn) {
    if (!$only || in_array($name, $only, true)) {
        $worker->addFunction($name, $fn);
    }
}
fwrite(STDOUT, "ready\n");
// work() returns false after a job the callback ended with setReturn(WORK_FAIL/EXCEPTION);
// that is not an error. On a real error (gearmand down) wait a little and try again.
$benign = [GEARMAN_SUCCESS, GEARMAN_IO_WAIT, GEARMAN_NO_JOBS, GEARMAN_WORK_FAIL,
           GEARMAN_WORK_EXCEPTION];
while (true) {
    if (!@$worker->work() && !in_array($worker->returnCode(), $benign, true)) {
        fwrite(STDERR, "work(): " . $worker->error() . "\n");
        usleep(100000);
    }
}
