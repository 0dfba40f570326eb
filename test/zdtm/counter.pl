#!/usr/bin/env perl
# counter_pl: the counter test with perl as the checkpointed program. Counts
# every 100 ms and prints "count N"; polls $ZDTM_CHECK every 20 ms; at the
# check verifies the count continued from the last printed value and that an
# array of every value printed is intact. ZDTM protocol: see zdtm.h.
use strict;
use warnings;

my $name = 'counter_pl';
my $ready = $ENV{ZDTM_READY} or die "ZDTM_READY not set (run through zdtm.py)\n";
my $check = $ENV{ZDTM_CHECK} or die "ZDTM_CHECK not set (run through zdtm.py)\n";
my $corrupt = $ENV{ZDTM_SELFTEST_CORRUPT} ? 1 : 0;
$| = 1;

my ($count, $last, $failure) = (0, 0, undef);
my @history;
sub tick {
    if ($count != $last && !defined $failure) {
        $failure = "count is $count but the last printed value was $last";
    }
    $count++;
    push @history, $count;
    print "count $count\n";
    $last = $count;
}

for (1 .. 3) {
    tick();
    select(undef, undef, undef, 0.1);
}
my $tmp = "$ready.tmp.$$";
open(my $fh, '>', $tmp) or die "open $tmp: $!\n";
print $fh "READY $$\n";
close($fh) or die "close $tmp: $!\n";
rename($tmp, $ready) or die "rename $tmp: $!\n";

my ($polls, $ticks) = (0, 0);
until (-e $check) {
    select(undef, undef, undef, 0.02);
    $polls++;
    if ($polls % 5 == 0) {
        tick();
        $ticks++;
        $count++ if $ticks == 3 && $corrupt;    # selftest: skip a value
    }
}

if (!defined $failure && $count != $last) {
    $failure = "count $count != last printed $last";
}
if (!defined $failure) {
    for my $i (0 .. $#history) {
        if ($history[$i] != $i + 1) {
            $failure = "history[$i] is $history[$i], want " . ($i + 1);
            last;
        }
    }
}
if (defined $failure) {
    print "FAIL $name: $failure\n";
    exit 1;
}
print "PASS $name\n";
exit 0;
