#!/usr/bin/perl
# A minimal start_server worker written the Server::Starter way: it takes its TCP
# sockets from server_ports(), answers every HTTP request with "pid=<pid> gen=<gen>\n"
# (one request per connection) and exits on TERM after finishing the current request.
use strict;
use warnings;
use IO::Handle;
use IO::Select;
use IO::Socket::INET;
use Errno qw(EINTR EAGAIN EWOULDBLOCK);
use Server::Starter qw(server_ports);

my $gen = $ENV{SERVER_STARTER_GENERATION};
my $term = 0;
$SIG{TERM} = sub { $term = 1 };
$SIG{PIPE} = 'IGNORE';
STDERR->autoflush(1);

my $sel = IO::Select->new;
for my $fd (values %{ server_ports() }) {
    my $sock = IO::Socket::INET->new(Proto => 'tcp')
        or die "socket: $!";
    $sock->fdopen($fd, 'r')
        or die "failed to fdopen $fd: $!";
    $sock->blocking(0);
    $sel->add($sock);
}
print STDERR "perlworker $$ gen $gen serving\n";

my $body = "pid=$$ gen=$gen\n";
while (!$term) {
    my @ready = $sel->can_read(0.1);
    for my $listen (@ready) {
        my $conn = $listen->accept;
        if (!$conn) {
            next if $! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK;
            die "accept: $!";
        }
        $conn->blocking(1);
        # read the request headers up to the blank line
        my $req = '';
        while ($req !~ /\r?\n\r?\n/) {
            my $n = sysread($conn, $req, 4096, length $req);
            next if !defined $n && $! == EINTR;
            last if !$n;
        }
        syswrite $conn, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
            . "Content-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
        close $conn;
    }
}
print STDERR "perlworker $$ got TERM, exiting\n";
exit 0;
