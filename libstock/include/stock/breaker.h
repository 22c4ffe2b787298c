#ifndef STOCK_BREAKER_H
#define STOCK_BREAKER_H
#include "common.h"
#endif
