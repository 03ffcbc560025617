/* gwmetrics.h: the gateway's metrics (not a public interface).
 *
 *   - every answer is counted (http_requests_total, request_duration_seconds, and
 *     auth_attempts_total for signup and signin): gwm_answered, from gw_reply;
 *   - the broker's state becomes gauges once a second (workers connected and busy, queue
 *     depth) and its refusals a counter (gwm_rejected);
 *   - GET /metrics asks the collector (a DEALER connected to metrics.query_endpoint) and
 *     answers when the exposition arrives, or 503 after GWM_TIMEOUT_MS. The event loop
 *     never waits for it: the connection waits (C_BUSY), the loop goes on.
 *
 * Single-threaded, like the rest of the gateway: every function runs on the reactor.
 */
#ifndef LK_GW_GWMETRICS_H
#define LK_GW_GWMETRICS_H

#include <stdint.h>

struct gw_conn;

#define GWM_TIMEOUT_MS 1000 /* the collector's answer to a GET /metrics; 503 past it */

/* Registers the gateway's series, adds the broker sampler, and connects the DEALER to the
 * collector (never fatal: /metrics then answers 503). Returns the DEALER's ZMQ_FD
 * (edge-triggered, like the broker's) for the epoll set, or -1 without a socket. */
int gwm_init(void);

/* Answers the /metrics requests still waiting (503), closes the socket and its context. */
void gwm_fini(void);

/* Reads the collector's answers (call at the top of every loop turn: ZMQ_FD is
 * edge-triggered and sends may consume its edge). Returns 1 when it stopped at its
 * budget with more to read, else 0. */
int gwm_drain(void);

/* Every cron turn: /metrics requests past GWM_TIMEOUT_MS get 503; ships the gateway's
 * metrics when due (lk_metrics_tick). */
void gwm_cron(void);

/* Counts one answer: method is llhttp's (-1: none parsed), route the route table's path
 * (NULL: no route matched), us the time since the head (counted only when method >= 0).
 * A hash lookup and a few increments: no allocation, no system call after the first
 * answer of each (route, method, status). */
void gwm_answered(int method, const char *route, int status, uint64_t us);

/* The broker refused a job of role (enum gw_role) with 503: no worker, or its queue full. */
void gwm_rejected(int role);

/* The handler of GET /metrics: asks the collector; c waits (C_BUSY) for its answer. */
void gwm_serve(struct gw_conn *c);

#endif
