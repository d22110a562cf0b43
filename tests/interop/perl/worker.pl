#!/usr/bin/perl
# A Gearman::Worker (pure Perl, libgearman-client-perl) for HQ's interop tests.
# usage: perl worker.pl PORT CLIENT_ID
# Functions: perl_reverse (returns the reversed argument), perl_die (dies: the worker sends
# WORK_EXCEPTION with the Storable-frozen error, then WORK_FAIL), perl_undef (returns undef:
# WORK_FAIL), perl_status (sends WORK_STATUS 1/2 and 2/2, then returns "ok").
use strict;
use warnings;
use Gearman::Worker;
$| = 1;

my ($port, $client_id) = @ARGV;
my $worker = Gearman::Worker->new(job_servers => ["127.0.0.1:$port"],
                                  client_id => $client_id || 'perl-w');
$worker->register_function(perl_reverse => sub { return scalar reverse $_[0]->arg });
$worker->register_function(perl_die => sub { die "perl worker died on " . $_[0]->arg . "\n" });
$worker->register_function(perl_undef => sub { return undef });
$worker->register_function(perl_status => sub {
    my $job = shift;
    $job->set_status(1, 2);
    select(undef, undef, undef, 0.05);
    $job->set_status(2, 2);
    return "ok";
});
print "ready\n";
# After a function dies the worker sends WORK_EXCEPTION and then WORK_FAIL; gearmand has
# already finished the job on the exception and answers the WORK_FAIL with an ERROR packet
# (JOB_NOT_FOUND), on which work() dies. Keep serving.
while (1) {
    eval { $worker->work; 1 } or print "work: $@";
}
