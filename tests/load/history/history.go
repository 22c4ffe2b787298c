package main

// The recorded history: every request and its response, the peeks taken
// between phases, the kills and restarts, and (with --mongo) the final
// MongoDB documents. Written as one JSON file (-out) so that a run can be
// re-checked offline: `history check FILE`.

import (
	"encoding/json"
	"fmt"
	"os"
)

// Target is one Buy route and the SKU it sells.
type Target struct {
	Route string `json:"route"` // db, atomic, signal, lock, many
	SKU   string `json:"sku"`
	Buy   string `json:"buy"`  // path of the Buy route
	Peek  string `json:"peek"` // path of its Peek route
}

// Targets: every Buy route of docs/server.md; ManyStock over its three SKUs.
var Targets = []Target{
	{"db", "OneStock:Db", "/api/v1/OneStock/Db/Buy", "/api/v1/OneStock/Db/Peek"},
	{"atomic", "OneStock:Atomic", "/api/v1/OneStock/Cache/Atomic/Buy", "/api/v1/OneStock/Cache/Atomic/Peek"},
	{"signal", "OneStock:Signal", "/api/v1/OneStock/Cache/Signal/Buy", "/api/v1/OneStock/Cache/Signal/Peek"},
	{"lock", "OneStock:Lock", "/api/v1/OneStock/Cache/Lock/Buy", "/api/v1/OneStock/Cache/Lock/Peek"},
	{"many", "NVDA", "/api/v1/ManyStock/Cache/BuyFastAtomic/NVDA", "/api/v1/ManyStock/Cache/PeekFastAtomic/NVDA"},
	{"many", "TSLA", "/api/v1/ManyStock/Cache/BuyFastAtomic/TSLA", "/api/v1/ManyStock/Cache/PeekFastAtomic/TSLA"},
	{"many", "AMD", "/api/v1/ManyStock/Cache/BuyFastAtomic/AMD", "/api/v1/ManyStock/Cache/PeekFastAtomic/AMD"},
}

// Durable reports whether a route acknowledges only once the buy is durable
// (Db/Buy: the embedded journal's fdatasync, or MongoDB's acknowledgement).
func Durable(route string) bool { return route == "db" }

// Op is one Buy request and what came back.
type Op struct {
	ID       int    `json:"id"`
	Client   int    `json:"client"`
	Instance int    `json:"inst"`  // which server instance (0-based)
	Epoch    int    `json:"epoch"` // that instance's process generation (0, then +1 per restart)
	SKU      string `json:"sku"`
	Route    string `json:"route"`
	Qty      int64  `json:"q"`
	Start    int64  `json:"start"`  // ns since the history began, just before the request was sent
	End      int64  `json:"end"`    // ns, once the whole response was read (or the error seen)
	Status   int    `json:"status"` // 0: no response (connection error, timeout)
	Body     string `json:"body,omitempty"`
	Err      string `json:"err,omitempty"`
}

// Level is a parsed 200 body or peek: the SKU's level.
type Level struct {
	OK        *bool  `json:"ok"`
	SKU       string `json:"sku"`
	Quantity  *int64 `json:"quantity"`
	Remaining *int64 `json:"remaining"`
	Sold      *int64 `json:"sold"`
	Version   *int64 `json:"version"`
	Error     string `json:"error"`
}

// Peek is one GET …/Peek between phases.
type Peek struct {
	Phase    string `json:"phase"` // begin (an epoch starts, before any buy of it), end (load over), clean (restart after SIGTERM)
	Instance int    `json:"inst"`
	Epoch    int    `json:"epoch"`
	SKU      string `json:"sku"`
	At       int64  `json:"at"`
	Status   int    `json:"status"`
	Body     string `json:"body,omitempty"`
}

// Event is a kill -9, a restart or a SIGTERM of an instance.
type Event struct {
	Kind     string `json:"kind"` // start, kill (mid-load), restart, term (SIGTERM), stop (SIGKILL at the end)
	Instance int    `json:"inst"`
	At       int64  `json:"at"`
}

// Lease is leases.<host> of a MongoDB document.
type Lease struct {
	Granted   int64 `json:"granted"`
	Sold      int64 `json:"sold"`
	Returned  int64 `json:"returned"`
	Reclaimed bool  `json:"reclaimed"`
}

// Doc is a SKU's MongoDB document after the run (every instance stopped).
type Doc struct {
	SKU     string           `json:"_id"`
	Stock   int64            `json:"stock"`
	Sold    int64            `json:"sold"`
	Lost    int64            `json:"lost"`
	Version int64            `json:"version"`
	Leases  map[string]Lease `json:"leases"`
}

// Params are what the checks need to know about the run.
type Params struct {
	Mode      string   `json:"mode"` // single | multi
	Initial   int64    `json:"initial"`
	Instances int      `json:"instances"`
	Hosts     []string `json:"hosts"` // host id of each instance (multi)
	// CacheLossMax: units of acknowledged write-behind (Cache/*, ManyStock)
	// buys a kill -9 may lose on a single instance (docs/server.md,
	// "Durability of each strategy"). 0 = every 200 must survive.
	CacheLossMax int64 `json:"cache_loss_max"`
	// LeaseHoldMax: units another instance's lease may hold at any moment
	// (multi): two grants of at most 1/8 of the pool each, plus a quantity.
	LeaseHoldMax int64 `json:"lease_hold_max"`
	// Levels: "exact" — a 200's body is the level just after its own take,
	// so it owns units sold-q+1..sold; "after" — the body is the level read
	// at some moment after its take (take, then read): only weaker checks.
	Levels string `json:"levels"`
	// KillAt: the run was to kill -9 an instance once this fraction of all
	// stock was acknowledged (0: no kill); checked to have happened.
	KillAt float64 `json:"kill_at"`
	// LinearTimeout bounds porcupine per partition (ns); a timeout is
	// reported, never a failure.
	LinearTimeout int64 `json:"linear_timeout_ns"`
	// Restocks: sold-out -> Admin restock cycles the driver was to run per
	// SKU (multi; 0: none); checked to have happened.
	Restocks int `json:"restocks,omitempty"`
	// StaleNs is B, the staleness bound (ns): a change that grows a pool
	// (a restock, a lease returned) reaches every instance within B, so a
	// 409 may be answered from a view at most B old. A restock's
	// linearization window is stretched to its end + B.
	StaleNs int64 `json:"stale_ns,omitempty"`
}

// History is a whole run.
type History struct {
	Params  Params          `json:"params"`
	Targets []Target        `json:"targets"`
	Ops     []Op            `json:"ops"`
	Peeks   []Peek          `json:"peeks"`
	Events  []Event         `json:"events"`
	Docs    map[string]*Doc `json:"docs,omitempty"` // multi: by SKU
	// Restocks: every POST /api/v1/Admin/Stock/{sku} {"restock": n} the
	// driver sent (Route "restock", Qty n; Client -1), with its answer.
	Restocks []Op     `json:"restocks,omitempty"`
	Notes    []string `json:"notes,omitempty"`
}

func (h *History) Save(path string) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func Load(path string) (*History, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var h History
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &h, nil
}

// ParseLevel parses a 200 body or a peek; nil if it is not a JSON object.
func ParseLevel(body string) *Level {
	var l Level
	if json.Unmarshal([]byte(body), &l) != nil {
		return nil
	}
	return &l
}

func v(p *int64) int64 {
	if p == nil {
		return -1
	}
	return *p
}
