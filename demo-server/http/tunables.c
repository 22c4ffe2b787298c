/*
 * Run-time tunables (app.h): an immutable struct app_tunables published as a
 * libstock RCU snapshot. Every buy reads it lock-free; Admin/Config
 * publishes a new copy and the old one is freed after a grace period, once
 * no request still reads it.
 */
#include <stdlib.h>

#include "app.h"

static void
tunables_free(void *obj, void *arg)
{
	(void)arg;
	free(obj);
}

int
app_tunables_init(struct app *app)
{
	struct app_tunables *t = malloc(sizeof *t);

	if (t == NULL)
		return STOCK_ENOMEM;
	t->gate_wait_ms = app->cfg.gate_wait_ms;
	t->max_quantity = app->cfg.max_quantity;
	if (stock_snapshot_init(&app->tunables, t, tunables_free, NULL) != 0) {
		free(t);
		return STOCK_ENOMEM;
	}
	return 0;
}

void
app_tunables_get(struct app *app, struct app_tunables *out)
{
	struct stock_snapshot_section sec;
	const struct app_tunables *t = stock_snapshot_read_begin(&app->tunables, &sec);

	if (t == NULL) { /* out of memory registering this thread: the start-up values */
		out->gate_wait_ms = app->cfg.gate_wait_ms;
		out->max_quantity = app->cfg.max_quantity;
		return;
	}
	*out = *t;
	stock_snapshot_read_end(&app->tunables, &sec);
}

int
app_tunables_set(struct app *app, const struct app_tunables *t)
{
	struct app_tunables *copy = malloc(sizeof *copy);

	if (copy == NULL)
		return STOCK_ENOMEM;
	*copy = *t;
	if (stock_snapshot_publish(&app->tunables, copy) != 0) {
		free(copy);
		return STOCK_ENOMEM;
	}
	return 0;
}
