<?php
// A PHP (pecl gearman / libgearman) client for HQ's interop tests. Prints one JSON line.
// usage: php client.php PORT MODE FUNCTION WORKLOAD [UNIQUE]
// MODE: normal | high | low            (foreground: doNormal / doHigh / doLow)
//       background | highbg | lowbg    (doBackground / doHighBackground / doLowBackground)
//       poll      (doBackground, then jobStatus() until the job is no longer known)
//       statuscb  (addTask + setStatusCallback + runTasks: the WORK_STATUS a foreground
//                  client is sent, as [numerator, denominator] pairs)
//       timeout   (doNormal with setTimeout(WORKLOAD-as-ms) on a function nobody serves)
$port = (int)$argv[1];
$mode = $argv[2];
$function = $argv[3];
$workload = $argv[4] ?? '';
$unique = $argv[5] ?? null;

$client = new GearmanClient();
$client->addServer('127.0.0.1', $port);
$out = ['mode' => $mode];

function rc_name(int $rc): string {
    $names = [
        GEARMAN_SUCCESS => 'SUCCESS', GEARMAN_WORK_FAIL => 'WORK_FAIL',
        GEARMAN_WORK_EXCEPTION => 'WORK_EXCEPTION', GEARMAN_WORK_STATUS => 'WORK_STATUS',
        GEARMAN_WORK_DATA => 'WORK_DATA', GEARMAN_TIMEOUT => 'TIMEOUT',
        GEARMAN_WORK_WARNING => 'WORK_WARNING',
    ];
    return $names[$rc] ?? "RC_$rc";
}

switch ($mode) {
    case 'normal':
    case 'high':
    case 'low':
        $method = ['normal' => 'doNormal', 'high' => 'doHigh', 'low' => 'doLow'][$mode];
        $result = $client->$method($function, $workload, $unique);
        $out['rc'] = rc_name($client->returnCode());
        $out['result'] = $result;
        break;
    case 'background':
    case 'highbg':
    case 'lowbg':
        $method = ['background' => 'doBackground', 'highbg' => 'doHighBackground',
                   'lowbg' => 'doLowBackground'][$mode];
        $handle = $client->$method($function, $workload, $unique);
        $out['rc'] = rc_name($client->returnCode());
        $out['handle'] = $handle;
        break;
    case 'poll':
        $handle = $client->doBackground($function, $workload, $unique);
        $out['rc'] = rc_name($client->returnCode());
        $out['handle'] = $handle;
        $seen = [];
        for ($i = 0; $i < 2000; $i++) {
            [$known, $running, $num, $den] = $client->jobStatus($handle);
            $row = [$known, $running, $num, $den];
            if (!$seen || end($seen) !== $row) {
                $seen[] = $row;
            }
            if (!$known) {
                break;
            }
            usleep(5000);
        }
        $out['statuses'] = $seen;
        break;
    case 'statuscb':
        $statuses = [];
        $result = null;
        $client->setStatusCallback(function (GearmanTask $task) use (&$statuses) {
            $statuses[] = [$task->taskNumerator(), $task->taskDenominator()];
        });
        $client->setCompleteCallback(function (GearmanTask $task) use (&$result) {
            $result = $task->data();
        });
        $client->addTask($function, $workload, null, $unique);
        $ok = $client->runTasks();
        $out['rc'] = rc_name($client->returnCode());
        $out['result'] = $result;
        $out['statuses'] = $statuses;
        break;
    case 'timeout':
        $client->setTimeout((int)$workload);
        $result = @$client->doNormal($function, 'x', $unique);
        $out['rc'] = rc_name($client->returnCode());
        $out['result'] = $result;
        break;
    default:
        fwrite(STDERR, "unknown mode $mode\n");
        exit(2);
}
echo json_encode($out), "\n";
