#ifndef STOCK_TELEMETRY_H
#define STOCK_TELEMETRY_H
#include "common.h"
#endif
