/*
 * mongo_docs - print every document of a database's collections, one
 * relaxed extended JSON object per line, for the shell tests' assertions
 * (jq reads them). Also: `mongo_docs URI DB --ping` exits 0 once the server
 * answers a ping (readiness probe for tests/services/services.sh).
 *
 *   mongo_docs mongodb://127.0.0.1:27017/ SuperStockStore [--ping]
 */
#include <mongoc/mongoc.h>
#include <stdio.h>
#include <string.h>

int
main(int argc, char **argv)
{
	mongoc_client_t *cl;
	mongoc_database_t *db;
	bson_error_t err;
	char **names;
	int rc = 0;

	if (argc < 3) {
		fprintf(stderr, "usage: %s URI DB [--ping]\n", argv[0]);
		return 2;
	}
	mongoc_init();
	mongoc_log_set_handler(NULL, NULL); /* quiet: the output is for jq */
	if ((cl = mongoc_client_new(argv[1])) == NULL) {
		fprintf(stderr, "mongo_docs: bad URI\n");
		return 2;
	}
	if (argc > 3 && strcmp(argv[3], "--ping") == 0) {
		bson_t *cmd = BCON_NEW("ping", BCON_INT32(1));
		rc = mongoc_client_command_simple(cl, "admin", cmd, NULL, NULL, &err) ? 0 : 1;
		bson_destroy(cmd);
		mongoc_client_destroy(cl);
		mongoc_cleanup();
		return rc;
	}
	db = mongoc_client_get_database(cl, argv[2]);
	if ((names = mongoc_database_get_collection_names_with_opts(db, NULL, &err)) == NULL) {
		fprintf(stderr, "mongo_docs: %s\n", err.message);
		rc = 1;
	}
	for (size_t i = 0; names != NULL && names[i] != NULL; i++) {
		mongoc_collection_t *col = mongoc_database_get_collection(db, names[i]);
		bson_t *q = bson_new();
		mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, q, NULL, NULL);
		const bson_t *doc;

		while (mongoc_cursor_next(cur, &doc)) {
			char *j = bson_as_relaxed_extended_json(doc, NULL);
			printf("%s\n", j);
			bson_free(j);
		}
		if (mongoc_cursor_error(cur, &err)) {
			fprintf(stderr, "mongo_docs: %s\n", err.message);
			rc = 1;
		}
		mongoc_cursor_destroy(cur);
		bson_destroy(q);
		mongoc_collection_destroy(col);
	}
	bson_strfreev(names);
	mongoc_database_destroy(db);
	mongoc_client_destroy(cl);
	mongoc_cleanup();
	return rc;
}
