/*
 * llmgw.h - public API of llmgw, an LLM gateway in one C file.
 *
 * Vendor llmgw.c and llmgw.h into your project, build llmgw.c with
 * -DLLMGW_NO_MAIN and drive the gateway from your own program:
 *
 *     char err[256];
 *     struct llmgw *gw = llmgw_new();
 *     if (llmgw_load_file(gw, "llmgw.ini", err, sizeof err) != 0) die(err);
 *     llmgw_run(gw);              // or call llmgw_poll() from your loop
 *     llmgw_free(gw);
 *
 * Every object hangs off the handle: two gateways can live in one process.
 * Only the symbols declared here are exported by llmgw.c.
 */
#ifndef LLMGW_H
#define LLMGW_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LLMGW_VERSION "0.1.0"

struct llmgw;

/* Allocates a gateway with no configuration. NULL when out of memory. */
struct llmgw *llmgw_new(void);

/* Loads (or, on a running gateway, reloads) the configuration. On error
 * returns -1 and writes "file:line: what is wrong" to err; a running
 * gateway keeps its previous configuration. name labels errors for a
 * configuration given as a string. */
int llmgw_load_file(struct llmgw *gw, const char *path, char *err, size_t errlen);
int llmgw_load_string(struct llmgw *gw, const char *text, const char *name,
                      char *err, size_t errlen);

/* Opens the listeners of the loaded configuration. llmgw_run() calls it;
 * hosts that use llmgw_poll() call it once first. -1 with err on failure. */
int llmgw_start(struct llmgw *gw, char *err, size_t errlen);

/* Runs the event loop until llmgw_stop(); then drains in-flight requests
 * (bounded by shutdown_timeout) and returns 0, or -1 if it could not start. */
int llmgw_run(struct llmgw *gw);

/* One loop iteration waiting at most timeout_ms (0 = do not block).
 * Returns 1 while the gateway is running, 0 once it has stopped and
 * drained. */
int llmgw_poll(struct llmgw *gw, int timeout_ms);

/* Asks the gateway to stop accepting and drain. Async-signal-safe and safe
 * to call from another thread. */
void llmgw_stop(struct llmgw *gw);

/* Asks the gateway to re-read its configuration file at the next loop
 * iteration (what SIGHUP does). Async-signal-safe. */
void llmgw_reload(struct llmgw *gw);

/* Closes every socket and frees everything. */
void llmgw_free(struct llmgw *gw);

const char *llmgw_version(void);

#ifdef __cplusplus
}
#endif
#endif /* LLMGW_H */
