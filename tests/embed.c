/*
 * tests/embed.c - llmgw embedded in a host program, through llmgw.h only.
 *
 * Build:  make embed-test   (also built by `make test`: suites embed, embed-asan)
 *         cc -std=c99 -DLLMGW_NO_MAIN -c llmgw.c && cc -std=c99 -c tests/embed.c &&
 *         cc embed.o llmgw.o -lpthread          (+ BearSSL with -DLLMGW_TLS=1)
 *
 * The host creates TWO gateways from configuration strings on two loopback
 * ports, starts them and runs its own poll loop: every turn it calls
 * llmgw_poll(gw, 0) on both and then does its own work, which is being an
 * HTTP client over non-blocking sockets that sends chat requests to each
 * gateway's mock provider and checks the answers. It also checks that a bad
 * configuration string is refused with a line number (and that a running
 * gateway keeps serving after such a reload), stops one gateway with
 * llmgw_stop() from another thread and the other from a SIGUSR1 handler,
 * each with a request half-sent so that the drain has something to finish,
 * checks that both drain and llmgw_poll() returns 0, and frees them.
 * Last line: "N passed, N failed"; exit status 1 if any check failed.
 */
#define _POSIX_C_SOURCE 200809L

#include "../llmgw.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int npass, nfail;

static void check(int ok, const char *fmt, ...)
{
	va_list ap;
	printf("%s ", ok ? "PASS" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (ok)
		npass++;
	else
		nfail++;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A loopback port nobody listens on right now. */
static int free_port(void)
{
	struct sockaddr_in sa;
	socklen_t sl = sizeof sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
		port = ntohs(sa.sin_port);
	if (fd >= 0) close(fd);
	return port;
}

/* ---- the gateways ------------------------------------------------------ */

#define NGW 2
static struct llmgw *gws[NGW];
static int alive[NGW];     /* llmgw_poll still returned 1 last time */
static int ports[NGW];
static const char *names[NGW] = {"A", "B"};
static const char *models[NGW] = {"alpha", "beta"};
static const char *keys[NGW] = {"sk-embed-a", "sk-embed-b"};

static struct llmgw *volatile sig_gw; /* what the SIGUSR1 handler stops */

static void on_sigusr1(int sig)
{
	(void)sig;
	if (sig_gw) llmgw_stop(sig_gw); /* async-signal-safe by contract */
}

static void *stopper(void *arg)
{
	struct timespec ts = {0, 50 * 1000000L};
	nanosleep(&ts, NULL); /* the host loop keeps polling meanwhile */
	llmgw_stop((struct llmgw *)arg);
	return NULL;
}

static void config_text(char *out, size_t n, int i)
{
	snprintf(out, n,
	         "; gateway %s, embedded\n"
	         "[gateway]\n"
	         "listen = 127.0.0.1:%d\n"
	         "log_level = warn\n"
	         "shutdown_timeout = 5s\n"
	         "\n"
	         "[provider.mock]\n"
	         "type = mock\n"
	         "\n"
	         "[model.%s]\n"
	         "target = mock mock-%s in=1 out=2\n"
	         "\n"
	         "[key.host]\n"
	         "secret = %s\n",
	         names[i], ports[i], models[i], names[i], keys[i]);
}

/* ---- the host's own HTTP client ---------------------------------------- */

enum { C_IDLE, C_SEND, C_READ, C_DONE, C_FAIL };

struct client {
	int fd, state, status, eof;
	char out[4096];
	size_t outlen, outoff, hold; /* hold: bytes not to send yet */
	char in[65536];
	size_t inlen;
	char err[160];
};

static int client_connect(struct client *c, int port)
{
	struct sockaddr_in sa;
	memset(c, 0, sizeof *c);
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	if (c->fd < 0) return -1;
	if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0) return -1;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) return -1;
	c->state = C_IDLE;
	return 0;
}

static void client_close(struct client *c)
{
	if (c->fd >= 0) close(c->fd);
	c->fd = -1;
}

/* Queues one chat request; hold > 0 keeps that many trailing bytes back. */
static void client_request(struct client *c, int gi, const char *model, const char *marker, int stream,
                           size_t hold)
{
	char body[512];
	int bl = snprintf(body, sizeof body,
	                  "{\"model\":\"%s\",\"stream\":%s,\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
	                  model, stream ? "true" : "false", marker);
	int n = snprintf(c->out, sizeof c->out,
	                 "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
	                 "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
	                 "Content-Length: %d\r\n\r\n%s",
	                 ports[gi], keys[gi], bl, body);
	c->outlen = (size_t)n;
	c->outoff = 0;
	c->hold = hold;
	c->inlen = 0;
	c->status = 0;
	c->state = C_SEND;
}

static const char *find(const char *hay, size_t n, const char *needle)
{
	size_t k = strlen(needle), i;
	for (i = 0; i + k <= n; i++)
		if (memcmp(hay + i, needle, k) == 0) return hay + i;
	return NULL;
}

/* Is c->in one complete response? Content-Length or chunked bodies. */
static int response_complete(struct client *c)
{
	const char *e = find(c->in, c->inlen, "\r\n\r\n"), *cl;
	size_t head;
	if (!e) return 0;
	head = (size_t)(e - c->in) + 4;
	if (c->status == 0 && sscanf(c->in, "HTTP/1.1 %d", &c->status) != 1) c->status = -1;
	cl = find(c->in, head, "Content-Length: ");
	if (cl) return c->inlen >= head + (size_t)atol(cl + 16);
	if (find(c->in, head, "Transfer-Encoding: chunked"))
		return c->inlen >= head + 5 && memcmp(c->in + c->inlen - 5, "0\r\n\r\n", 5) == 0;
	return c->eof; /* delimited by close */
}

/* The host's work for one client, never blocking. */
static void client_step(struct client *c)
{
	ssize_t n;
	if (c->fd < 0 || c->state == C_FAIL) return;
	if (c->state == C_DONE || c->state == C_IDLE) { /* idle keep-alive: notice a close */
		char b[64];
		n = recv(c->fd, b, sizeof b, 0);
		if (n == 0 || (n < 0 && errno == ECONNRESET)) c->eof = 1;
		return;
	}
	if (c->state == C_SEND && c->outoff < c->outlen - c->hold) {
		n = send(c->fd, c->out + c->outoff, c->outlen - c->hold - c->outoff, MSG_NOSIGNAL);
		if (n > 0)
			c->outoff += (size_t)n;
		else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOTCONN) {
			snprintf(c->err, sizeof c->err, "send: %s", strerror(errno));
			c->state = C_FAIL;
			return;
		}
		if (c->outoff == c->outlen) c->state = C_READ;
	}
	for (;;) {
		n = recv(c->fd, c->in + c->inlen, sizeof c->in - 1 - c->inlen, 0);
		if (n > 0) {
			c->inlen += (size_t)n;
			c->in[c->inlen] = 0;
			if (c->inlen == sizeof c->in - 1) {
				snprintf(c->err, sizeof c->err, "response too large");
				c->state = C_FAIL;
				return;
			}
			continue;
		}
		if (n == 0) c->eof = 1;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOTCONN) {
			if (errno == ECONNRESET) c->eof = 1;
			else {
				snprintf(c->err, sizeof c->err, "recv: %s", strerror(errno));
				c->state = C_FAIL;
				return;
			}
		}
		break;
	}
	if (c->state == C_READ && response_complete(c)) c->state = C_DONE;
	else if (c->eof && c->state != C_IDLE) {
		snprintf(c->err, sizeof c->err, "connection closed after %zu bytes", c->inlen);
		c->state = C_FAIL;
	}
}

/* One turn of the host loop: both gateways, then the host's own clients,
 * then a short poll() on the host's sockets. */
static void host_turn(struct client **cs, int ncs)
{
	struct pollfd pf[8];
	int i, n = 0;
	for (i = 0; i < NGW; i++)
		if (alive[i]) alive[i] = llmgw_poll(gws[i], 0);
	for (i = 0; i < ncs; i++) {
		client_step(cs[i]);
		if (cs[i]->fd >= 0 && n < 8) {
			pf[n].fd = cs[i]->fd;
			pf[n].events = (short)(POLLIN | (cs[i]->state == C_SEND ? POLLOUT : 0));
			pf[n].revents = 0;
			n++;
		}
	}
	poll(pf, (nfds_t)n, 2);
}

/* Runs the loop until every client is done or failed (or ms pass). */
static int run_clients(struct client **cs, int ncs, int ms)
{
	long long end = now_ms() + ms;
	int i, busy;
	do {
		host_turn(cs, ncs);
		for (busy = 0, i = 0; i < ncs; i++)
			if (cs[i]->state == C_SEND || cs[i]->state == C_READ) busy = 1;
	} while (busy && now_ms() < end);
	return !busy;
}

static const char *body_of(const struct client *c)
{
	const char *e = find(c->in, c->inlen, "\r\n\r\n");
	return e ? e + 4 : "";
}

static void expect_chat(struct client *c, const char *what, const char *marker, int stream)
{
	char want[128];
	int ok;
	snprintf(want, sizeof want, "You said: %s", marker);
	if (c->state != C_DONE) {
		check(0, "%s: %s", what, c->err[0] ? c->err : "no complete response in time");
		return;
	}
	if (stream)
		ok = c->status == 200 && find(c->in, c->inlen, "text/event-stream") &&
		     find(c->in, c->inlen, "data: [DONE]") && find(c->in, c->inlen, "\"content\"");
	else
		ok = c->status == 200 && strstr(body_of(c), want) != NULL;
	check(ok, "%s: status %d%s", what, c->status, ok ? "" : body_of(c));
}

/* Waits until gateway i reports it stopped (llmgw_poll returned 0). */
static int wait_stopped(int i, struct client **cs, int ncs, int ms)
{
	long long end = now_ms() + ms;
	while (alive[i] && now_ms() < end) host_turn(cs, ncs);
	return !alive[i];
}

static int port_refuses(int port)
{
	struct sockaddr_in sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0), r;
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r = connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno == ECONNREFUSED;
	close(fd);
	return r;
}

/* ---- the checks -------------------------------------------------------- */

static void test_config_errors(void)
{
	char err[256];
	struct llmgw *g = llmgw_new();
	int r;
	if (!g) {
		check(0, "llmgw_new");
		return;
	}
	r = llmgw_load_string(g, "[gateway]\nlisten = 127.0.0.1:1\n\nmax_attempts = lots\n", "host-config", err,
	                      sizeof err);
	check(r == -1 && strncmp(err, "host-config:4:", 14) == 0, "bad value refused with name and line: \"%s\"",
	      r == -1 ? err : "(accepted)");
	r = llmgw_load_string(g, "[gateway]\nlisten = 127.0.0.1:1\n[provider.p]\ntype = mock\nno_such_key = 1\n",
	                      "second", err, sizeof err);
	check(r == -1 && strncmp(err, "second:5:", 9) == 0, "unknown key refused with its line: \"%s\"",
	      r == -1 ? err : "(accepted)");
	r = llmgw_load_string(g, "[gateway\n", NULL, err, sizeof err);
	check(r == -1 && strstr(err, ":1:") != NULL, "unnamed string: error still has the line: \"%s\"",
	      r == -1 ? err : "(accepted)");
	check(llmgw_start(g, err, sizeof err) == -1, "llmgw_start without a configuration fails: \"%s\"", err);
	llmgw_free(g);
}

int main(void)
{
	char cfg[1024], err[512], marker[64];
	struct client k1, k2, k3, *cs[3];
	struct sigaction sa;
	pthread_t th;
	int i;

	check(strcmp(llmgw_version(), LLMGW_VERSION) == 0, "llmgw_version() is %s", LLMGW_VERSION);
	test_config_errors();

	for (i = 0; i < NGW; i++) {
		ports[i] = free_port();
		gws[i] = llmgw_new();
		if (!gws[i] || !ports[i]) {
			check(0, "gateway %s: llmgw_new / free port", names[i]);
			goto out;
		}
		config_text(cfg, sizeof cfg, i);
		if (llmgw_load_string(gws[i], cfg, names[i], err, sizeof err) != 0) {
			check(0, "gateway %s: llmgw_load_string: %s", names[i], err);
			goto out;
		}
		if (llmgw_start(gws[i], err, sizeof err) != 0) {
			check(0, "gateway %s: llmgw_start: %s", names[i], err);
			goto out;
		}
		alive[i] = 1;
	}
	check(1, "two gateways started on 127.0.0.1:%d and 127.0.0.1:%d", ports[0], ports[1]);

	/* Both at once: on each gateway a keep-alive connection with a plain then
	 * a streamed request, the two gateways' clients interleaved in one loop. */
	if (client_connect(&k1, ports[0]) || client_connect(&k2, ports[1])) {
		check(0, "connect: %s", strerror(errno));
		goto out;
	}
	cs[0] = &k1, cs[1] = &k2;
	client_request(&k1, 0, models[0], "hello-A-1", 0, 0);
	client_request(&k2, 1, models[1], "hello-B-1", 0, 0);
	run_clients(cs, 2, 5000);
	expect_chat(&k1, "gateway A: chat through its mock provider", "hello-A-1", 0);
	expect_chat(&k2, "gateway B: chat through its mock provider", "hello-B-1", 0);
	client_request(&k1, 0, models[0], "stream-A", 1, 0);
	client_request(&k2, 1, models[1], "stream-B", 1, 0);
	run_clients(cs, 2, 5000);
	expect_chat(&k1, "gateway A: streamed, same keep-alive connection", "stream-A", 1);
	expect_chat(&k2, "gateway B: streamed, same keep-alive connection", "stream-B", 1);

	/* Separate routing tables: A does not know B's model or key. */
	client_request(&k1, 0, models[1], "wrong-model", 0, 0);
	run_clients(cs, 1, 5000);
	check(k1.state == C_DONE && k1.status == 404, "gateway A does not know model %s: status %d", models[1],
	      k1.status);

	/* A bad configuration for a running gateway is refused, with its line,
	 * and the gateway keeps its previous configuration. */
	{
		int r = llmgw_load_string(gws[0], "[gateway]\nlisten = 127.0.0.1:1\n[model.x]\ntarget = nowhere m\n",
		                          "reload", err, sizeof err);
		check(r == -1 && strncmp(err, "reload:", 7) == 0 && strstr(err, ":4:") != NULL,
		      "running gateway A: bad configuration refused: \"%s\"", r == -1 ? err : "(accepted)");
		client_request(&k1, 0, models[0], "after-bad-reload", 0, 0);
		run_clients(cs, 1, 5000);
		expect_chat(&k1, "gateway A still serves its old configuration", "after-bad-reload", 0);
	}

	/* Stop A from another thread, while a request is half-sent (the last 10
	 * bytes held back) and k1 sits idle on keep-alive. */
	if (client_connect(&k3, ports[0])) {
		check(0, "connect: %s", strerror(errno));
		goto out;
	}
	cs[0] = &k3, cs[1] = &k1, cs[2] = &k2;
	client_request(&k3, 0, models[0], "in-flight-A", 0, 10);
	{
		long long end = now_ms() + 2000; /* let the gateway read the head */
		while (now_ms() < end && k3.outoff < k3.outlen - k3.hold) host_turn(cs, 3);
		end = now_ms() + 100;
		while (now_ms() < end) host_turn(cs, 3);
	}
	if (pthread_create(&th, NULL, stopper, gws[0]) != 0) {
		check(0, "pthread_create");
		goto out;
	}
	{
		long long end = now_ms() + 300; /* the thread stops A during this */
		while (now_ms() < end) host_turn(cs, 3);
	}
	pthread_join(th, NULL);
	check(alive[0], "gateway A: still draining while a request is in flight");
	check(k1.eof, "gateway A: idle keep-alive connection closed by the stop");
	check(port_refuses(ports[0]), "gateway A: listener closed (connect refused)");
	k3.hold = 0; /* the rest of the body */
	run_clients(cs, 1, 5000);
	expect_chat(&k3, "gateway A: the in-flight request completes during the drain", "in-flight-A", 0);
	check(find(k3.in, k3.inlen, "Connection: close") != NULL, "gateway A: drained response says Connection: close");
	check(wait_stopped(0, cs, 3, 5000), "gateway A: llmgw_poll returned 0 (stopped and drained)");
	check(llmgw_poll(gws[0], 0) == 0, "gateway A: llmgw_poll keeps returning 0");
	client_close(&k1);
	client_close(&k3);

	/* B is unaffected by A's stop. */
	client_request(&k2, 1, models[1], "B-after-A-stopped", 0, 0);
	cs[0] = &k2;
	run_clients(cs, 1, 5000);
	expect_chat(&k2, "gateway B: still serving after A stopped", "B-after-A-stopped", 0);

	/* Stop B from a signal handler, again with a request in flight. */
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_sigusr1;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sig_gw = gws[1];
	snprintf(marker, sizeof marker, "in-flight-B");
	client_request(&k2, 1, models[1], marker, 0, 7);
	{
		long long end = now_ms() + 2000;
		while (now_ms() < end && k2.outoff < k2.outlen - k2.hold) host_turn(cs, 1);
		end = now_ms() + 100;
		while (now_ms() < end) host_turn(cs, 1);
	}
	check(raise(SIGUSR1) == 0, "raise(SIGUSR1)");
	{
		long long end = now_ms() + 200;
		while (now_ms() < end) host_turn(cs, 1);
	}
	check(alive[1], "gateway B: still draining while a request is in flight");
	check(port_refuses(ports[1]), "gateway B: listener closed after the signal");
	k2.hold = 0;
	run_clients(cs, 1, 5000);
	expect_chat(&k2, "gateway B: the in-flight request completes during the drain", marker, 0);
	check(wait_stopped(1, cs, 1, 5000), "gateway B: llmgw_poll returned 0 (stopped and drained)");
	check(llmgw_poll(gws[1], 0) == 0, "gateway B: llmgw_poll keeps returning 0");
	client_close(&k2);
	sig_gw = NULL;

out:
	for (i = 0; i < NGW; i++) llmgw_free(gws[i]); /* llmgw_free(NULL) is a no-op */
	printf("%d passed, %d failed\n", npass, nfail);
	return nfail ? 1 : 0;
}
