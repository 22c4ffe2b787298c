package main

// The final MongoDB state, read with tests/services/mongo_docs (one relaxed
// extended JSON document per line).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
)

func num(x any) (int64, bool) {
	switch t := x.(type) {
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i, true
		}
		if f, err := t.Float64(); err == nil {
			return int64(f), true
		}
	case map[string]any: // {"$numberLong": "…"} and friends
		for _, k := range []string{"$numberLong", "$numberInt", "$numberDouble"} {
			if s, ok := t[k].(string); ok {
				if i, err := strconv.ParseInt(s, 10, 64); err == nil {
					return i, true
				}
			}
		}
	}
	return 0, false
}

// ParseDocs parses mongo_docs output, keeping the documents of known SKUs.
func ParseDocs(out []byte) (map[string]*Doc, error) {
	known := map[string]bool{}
	for _, t := range Targets {
		known[t.SKU] = true
	}
	docs := map[string]*Doc{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.UseNumber()
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("mongo_docs: %v: %s", err, sc.Text())
		}
		id, _ := m["_id"].(string)
		if !known[id] {
			continue // StockClaims and anything else
		}
		d := &Doc{SKU: id, Leases: map[string]Lease{}}
		d.Stock, _ = num(m["stock"])
		d.Sold, _ = num(m["sold"])
		d.Lost, _ = num(m["lost"])
		d.Version, _ = num(m["version"])
		if ls, ok := m["leases"].(map[string]any); ok {
			for host, x := range ls {
				lm, _ := x.(map[string]any)
				var l Lease
				l.Granted, _ = num(lm["granted"])
				l.Sold, _ = num(lm["sold"])
				l.Returned, _ = num(lm["returned"])
				l.Reclaimed, _ = lm["reclaimed"].(bool)
				d.Leases[host] = l
			}
		}
		docs[id] = d
	}
	return docs, sc.Err()
}

func readDocs(bin, uri, db string) (map[string]*Doc, error) {
	out, err := exec.Command(bin, uri, db).Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s %s: %v", bin, uri, db, err)
	}
	return ParseDocs(out)
}
