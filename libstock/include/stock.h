/*
 * libstock — stock-counter concurrency primitives on ConcurrencyKit.
 *
 * Umbrella header: include this, or only the stock/<module>.h you use.
 * Link with `pkg-config --cflags --libs libstock`.
 */
#ifndef STOCK_H
#define STOCK_H

#include "stock/common.h"
#include "stock/counter.h"
#include "stock/signal.h"
#include "stock/snapshot.h"
#include "stock/breaker.h"
#include "stock/permits.h"
#include "stock/version.h"
#include "stock/table.h"
#include "stock/telemetry.h"
#include "stock/sampler.h"
#include "stock/latch.h"
#include "stock/once.h"
#include "stock/drain.h"
#include "stock/wheel.h"

#endif /* STOCK_H */
