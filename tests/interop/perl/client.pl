#!/usr/bin/perl
# A Gearman::Client (pure Perl, libgearman-client-perl) for HQ's interop tests.
# usage: perl client.pl PORT MODE FUNCTION ARG [UNIQ]
# MODE: do | do_high | do_low (do_task, prints "result: ..." or "undef"),
#       bg | bg_high | bg_low (dispatch_background, prints "handle: ...").
use strict;
use warnings;
use Gearman::Client;
$| = 1;

my ($port, $mode, $func, $arg, $uniq) = @ARGV;
my $client = Gearman::Client->new(job_servers => ["127.0.0.1:$port"]);
my %opts;
$opts{uniq} = $uniq if defined $uniq;
$opts{priority} = $1 if $mode =~ /_(high|low)$/;

if ($mode =~ /^do/) {
    my @failed;
    $opts{on_fail} = sub { push @failed, defined $_[0] ? $_[0] : '' };
    $opts{timeout} = 20;
    my $ret = eval { $client->do_task($func, $arg, \%opts) };
    if ($@) {
        (my $err = $@) =~ s/\s+/ /g;
        print "error: $err\n";
    } else {
        print defined $ret ? "result: $$ret\n" : "undef\n";
    }
} elsif ($mode =~ /^bg/) {
    my $handle = $client->dispatch_background($func, $arg, \%opts);
    print defined $handle ? "handle: $handle\n" : "undef\n";
} else {
    die "unknown mode $mode\n";
}
